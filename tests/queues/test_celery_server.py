"""The Celery consumer inside the real server: events pushed as Django pushes them end in
posthog_event; a server killed with SIGKILL mid-batch loses none of them and stores none twice."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.queues.celery import CeleryKeys
from plugin_server.queues.celery_format import PLUGIN_JOB_TASK, encode_celery_event, encode_task_message
from tests.conftest import REDIS_URL
from tests.factories import create_team
from tests.kafka_broker import free_port
from tests.server_process import server_env, server_process, wait_ready
from tests.waiting import wait_for

QUEUE = "posthog-plugins"
KEYS = CeleryKeys(QUEUE)


def event_message(seq: int, *, team_id: int = 2, users: int = 50) -> bytes:
    return encode_celery_event(
        f"user-{seq % users}",
        "127.0.0.1",
        "http://localhost",
        {"event": "$pageview", "properties": {"seq": seq, "$current_url": "http://localhost/"}},
        team_id,
        "2021-10-28T12:00:01.123456+00:00",
        "2021-10-28T12:00:00.500000Z",
        queue=QUEUE,
    ).encode()


async def push(redis: aioredis.Redis, messages: list[bytes]) -> None:
    for start in range(0, len(messages), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for message in messages[start : start + 1000]:
                pipe.lpush(QUEUE, message)
            await pipe.execute()


async def stored_seqs(pg: asyncpg.Pool) -> list[int]:
    rows = await pg.fetch("SELECT (properties->>'seq')::int AS seq FROM posthog_event")
    return [r["seq"] for r in rows]


async def test_events_from_the_celery_list_are_stored_and_bad_ones_dead_lettered(
    settings_factory: Callable[..., Settings], run_server: Any, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    await create_team(pg)
    await push(redis, [event_message(i) for i in range(20)] + [b"not a celery message"])
    settings = settings_factory(http_server_port=free_port())
    async with run_server(settings) as server:
        await wait_for(lambda: pg.fetchval("SELECT count(*) = 20 FROM posthog_event"), within=20)
        await wait_for(lambda: pg.fetchval("SELECT count(*) = 1 FROM plugin_server_dead_letter"), within=5)
        server._readiness_cache = None
        assert await server.readiness() == {}
    assert sorted(await stored_seqs(pg)) == list(range(20))
    row = await pg.fetchrow(
        "SELECT event, distinct_id, team_id FROM posthog_event WHERE properties->>'seq' = '3'"
    )
    assert row["event"] == "$pageview" and row["distinct_id"] == "user-3" and row["team_id"] == 2
    dead = await pg.fetchrow("SELECT stage, raw FROM plugin_server_dead_letter")
    assert dead["stage"] == "celery_parse" and bytes(dead["raw"]) == b"not a celery message"
    assert await redis.llen(QUEUE) == 0


async def test_4_7_116_plugin_job_task_lands_in_the_graphile_job_queue(
    settings_factory: Callable[..., Settings], run_server: Any, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    await create_team(pg)
    args = [2, 39, "someJobName", "start", {"a": 1}]
    # Another instance holds the job-consumer lock, so the job stays in the table to be looked at.
    await redis.set("plugin-server:locks:job-queue-consumer", "another-instance", px=60_000)
    await push(redis, [encode_task_message(PLUGIN_JOB_TASK, args, {}, queue=QUEUE).encode()])
    async with run_server(settings_factory()):
        await wait_for(lambda: pg.fetchval("SELECT count(*) = 1 FROM graphile_worker.jobs"), within=20)
    row = await pg.fetchrow("SELECT task_identifier, payload FROM graphile_worker.jobs")
    payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
    assert row["task_identifier"] == "pluginJob"
    assert payload["type"] == "someJobName" and payload["pluginConfigId"] == 39
    assert payload["pluginConfigTeam"] == 2 and payload["payload"] == {"a": 1, "$operation": "start"}
    assert await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter") == 0


async def test_sigkill_mid_batch_loses_no_event(pg_dsn: str, redis: aioredis.Redis, pg: asyncpg.Pool) -> None:
    total, batch_size = 5000, 1000
    await create_team(pg)
    await push(redis, [event_message(i) for i in range(total)])
    env = server_env(
        DATABASE_URL=pg_dsn,
        REDIS_URL=REDIS_URL,
        INGESTION_BATCH_SIZE=str(batch_size),
        CELERY_HEARTBEAT_TTL_SECONDS="2",
        LOG_LEVEL="warn",
    )

    async def mid_batch() -> bool:
        # Some batch is committed and another is in flight in a processing list.
        in_flight = [k async for k in redis.scan_iter(KEYS.processing("*"))]
        return bool(in_flight) and 0 < await pg.fetchval("SELECT count(*) FROM posthog_event") < total

    first = dict(env, HTTP_SERVER_PORT=str(free_port()))
    with server_process(first) as process:
        await wait_for(mid_batch, within=60)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    killed_at = await pg.fetchval("SELECT count(*) FROM posthog_event")
    assert killed_at < total
    assert [k async for k in redis.scan_iter(KEYS.processing("*"))]  # the killed instance's batch

    second = dict(env, HTTP_SERVER_PORT=str(free_port()))
    with server_process(second) as process:
        wait_ready(process, int(second["HTTP_SERVER_PORT"]))

        async def all_stored() -> bool:
            return set(await stored_seqs(pg)) == set(range(total)) and await redis.llen(QUEUE) == 0

        await wait_for(all_stored, within=90)
        await wait_for(lambda: _no_processing_lists(redis), within=10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    seqs = await stored_seqs(pg)
    assert sorted(seqs) == list(range(total))  # none missing, none stored twice


async def _no_processing_lists(redis: aioredis.Redis) -> bool:
    return not [k async for k in redis.scan_iter(KEYS.processing("*"))]


async def test_a_plugin_stuck_in_c_code_does_not_hold_up_shutdown(
    pg_dsn: str, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    """A sandbox abandoned while its plugin sleeps inside C keeps a thread the interpreter would
    wait for at exit: SIGTERM still ends the server promptly, with status 0."""
    from tests.plugins.conftest import add_python_plugin

    await create_team(pg)
    await add_python_plugin(
        pg,
        """
        import time

        def process_event(event, meta):
            if event["properties"]["seq"] == 0:
                time.sleep(120)
            return event
        """,
    )
    env = server_env(
        DATABASE_URL=pg_dsn,
        REDIS_URL=REDIS_URL,
        TASK_TIMEOUT="1",
        LOG_LEVEL="warn",
        HTTP_SERVER_PORT=str(free_port()),
    )
    with server_process(env) as process:
        wait_ready(process, int(env["HTTP_SERVER_PORT"]))
        await push(redis, [event_message(0), event_message(1)])

        async def both_stored() -> bool:
            return sorted(await stored_seqs(pg)) == [0, 1]

        await wait_for(both_stored, within=60)  # the sleeping sandbox was given up on
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
