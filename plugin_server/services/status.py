"""Writes the Redis keys the PostHog app reads to know this server is alive (services §7.2)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import redis.asyncio as aioredis

from plugin_server.logs import get_logger
from plugin_server.version import VERSION

PING_KEY = "@posthog-plugin-server/ping"
VERSION_KEY = "@posthog-plugin-server/version"
JOB_QUEUES_KEY = "@posthog-plugin-server/enabled-job-queues"
PING_TTL_SECONDS = 60
PING_INTERVAL_SECONDS = 5.0

log = get_logger(__name__)


def iso_now() -> str:
    """ISO-8601 UTC with milliseconds and a Z, as JavaScript's Date.toISOString()."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StatusKeys:
    name = "status-keys"

    def __init__(
        self, redis: aioredis.Redis, job_queues: list[str], interval: float = PING_INTERVAL_SECONDS
    ) -> None:
        self._redis = redis
        self._job_queues = job_queues
        self._interval = interval
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        # JSON-encoded comma list: the PostHog app strips the quotes and splits on ','.
        await self._redis.set(JOB_QUEUES_KEY, json.dumps(",".join(self._job_queues)))
        await self.ping()

    async def ping(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(PING_KEY, iso_now(), ex=PING_TTL_SECONDS)
            pipe.set(VERSION_KEY, VERSION)
            await pipe.execute()

    async def run(self) -> None:
        while not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=self._interval)
            except TimeoutError:
                await self.ping()

    async def stop(self) -> None:
        self._stopped.set()
