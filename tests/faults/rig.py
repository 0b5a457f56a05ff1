"""The real server (a child process) on the fault suite's own Postgres and Redis, Celery events
pushed as Django pushes them, and the exact account of where each one ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from plugin_server.db.migrate import migrate
from plugin_server.db.postgres import create_pool
from plugin_server.queues.celery import CeleryKeys
from plugin_server.queues.celery_format import encode_celery_event
from tests.factories import TEAM_ID, create_team
from tests.faults.services import PostgresCluster, RedisServer, postgres_cluster, redis_server
from tests.kafka_broker import free_port
from tests.server_process import ROOT, http_get, server_env

QUEUE = "posthog-plugins"
KEYS = CeleryKeys(QUEUE)
NOW = "2021-10-28T12:00:01.123456+00:00"


def event_message(seq: int, users: int = 200) -> bytes:
    return encode_celery_event(
        f"user-{seq % users}",
        "127.0.0.1",
        "http://localhost",
        {"event": "$pageview", "properties": {"seq": seq, "$set_once": {"first_seq": seq}}},
        TEAM_ID,
        NOW,
        None,
        queue=QUEUE,
    ).encode()


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within:g} s")
        await asyncio.sleep(0.05)


@dataclass
class Rig:
    postgres: PostgresCluster
    redis_server: RedisServer
    dsn: str
    logs: Path
    batch_size: int = 200
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    pushed: int = 0
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    # -------------------------------------------------------------- the server
    def start_server(self, **env_values: str) -> None:
        self.port = free_port()
        env = server_env(
            DATABASE_URL=self.dsn,
            REDIS_URL=self.redis_server.url,
            HTTP_SERVER_PORT=str(self.port),
            INGESTION_BATCH_SIZE=str(self.batch_size),
            CELERY_HEARTBEAT_TTL_SECONDS="3",
            LOG_LEVEL="warn",
            **env_values,
        )
        self._log_file = open(self.logs / f"server-{time.monotonic_ns()}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "plugin_server"],
            env=env,
            cwd=ROOT,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def readiness(self) -> tuple[int, dict[str, Any]]:
        try:
            status, body = http_get(self.port, "/_ready")
        except OSError:
            return 0, {}
        return status, json.loads(body or b"{}")

    async def wait_ready(self, within: float = 60) -> None:
        async def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, "the server exited"
            return (await asyncio.to_thread(self.readiness))[0] == 200

        await wait_for(ready, within, "server ready")

    def kill_server(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop_server(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.process = None
        return code

    # -------------------------------------------------------------- events and accounting
    async def push(self, redis: aioredis.Redis, count: int) -> None:
        messages = [event_message(seq) for seq in range(self.pushed, self.pushed + count)]
        for start in range(0, len(messages), 500):
            async with redis.pipeline(transaction=False) as pipe:
                for message in messages[start : start + 500]:
                    pipe.lpush(QUEUE, message)
                await pipe.execute()
        self.pushed += count

    async def stored(self, pg: asyncpg.Pool) -> int:
        """Events stored so far; -1 while Postgres does not answer."""
        try:
            return int(await pg.fetchval("SELECT count(*) FROM posthog_event", timeout=5))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await pg.expire_connections()
            return -1

    async def wait_progress(self, pg: asyncpg.Pool, beyond: int, within: float = 60) -> float:
        """Seconds until more than `beyond` events are stored."""
        started = time.monotonic()

        async def moved() -> bool:
            return await self.stored(pg) > beyond

        await wait_for(moved, within, f"more than {beyond} events stored")
        return time.monotonic() - started

    async def assert_exactly_once(self, pg: asyncpg.Pool, redis: aioredis.Redis, within: float = 120) -> None:
        """Every event pushed is stored exactly once, none dead-lettered, and the queue drains."""

        async def drained() -> bool:
            processing = [k async for k in redis.scan_iter(KEYS.processing("*"))]
            return await self.stored(pg) >= self.pushed and not await redis.llen(QUEUE) and not processing

        await wait_for(drained, within, "queue drained")
        rows = await pg.fetch("SELECT (properties->>'seq')::int AS seq FROM posthog_event")
        seqs = sorted(r["seq"] for r in rows)
        duplicates = len(seqs) - len(set(seqs))
        assert duplicates == 0, f"{duplicates} events stored twice"
        assert seqs == list(range(self.pushed)), "events missing"
        assert await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter") == 0


@contextlib.asynccontextmanager
async def rig(batch_size: int = 200) -> AsyncIterator[tuple[Rig, asyncpg.Pool, aioredis.Redis]]:
    """A migrated database with team 2 on an own cluster, an own Redis with AOF, and the server
    (started by the test). Yields the rig and clients of both stores."""
    with postgres_cluster() as cluster, redis_server() as redis_srv, tempfile.TemporaryDirectory() as logs:
        dsn = f"{cluster.dsn_root}/posthog"
        await migrate(dsn)
        pg = await create_pool(dsn, min_size=1, max_size=3)
        # The test's own client retries across the restarts it causes.
        redis = aioredis.Redis.from_url(
            redis_srv.url,
            socket_connect_timeout=2,
            retry=Retry(ExponentialBackoff(cap=1.0), retries=60),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        the_rig = Rig(cluster, redis_srv, dsn, Path(logs), batch_size)
        try:
            await create_team(pg, TEAM_ID, ingested_event=True)
            yield the_rig, pg, redis
        finally:
            if the_rig.process is not None:
                the_rig.process.kill()
                the_rig.process.wait()
            await redis.aclose()
            await pg.close()
