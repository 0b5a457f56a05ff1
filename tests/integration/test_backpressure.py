"""Back-pressure (services §1.6.1) in the real server: with the plugin workers full the job
consumer pauses, and it resumes once they drain; no job is lost."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.metrics import REGISTRY
from tests.integration.conftest import QUEUE, celery_event, service, storage, wait_until
from tests.plugins.conftest import add_python_plugin


async def test_1_6_1_job_consumer_pauses_while_workers_are_full(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    await add_python_plugin(
        pg,
        """
        import asyncio

        async def slow(payload, meta):
            await asyncio.sleep(0.6)
            await meta.storage.set(f"done-{payload}", True)

        jobs = {"slow": slow}

        def process_event(event, meta):
            for number in range(8):
                meta.jobs.slow(number).run_now()
            return event
        """,
    )
    # one sandbox: "full" means more than 1 x 1 calls waiting; the queue runs 4 jobs at once
    async with run_server(settings.replace(worker_concurrency=1)) as server:
        consumer = service(server, "job-queue-consumer")
        await redis.lpush(QUEUE, celery_event(1))

        async def paused() -> bool:
            return bool(consumer.paused)

        await wait_until(paused, 20)
        assert REGISTRY.get_sample_value("plugin_server_queue_paused", {"queue": "jobs"}) == 1

        async def all_done() -> bool:
            return len(await storage(pg)) == 8

        await wait_until(all_done, 30)
        await wait_until(lambda: _not(paused()), 5)
        assert REGISTRY.get_sample_value("plugin_server_queue_paused", {"queue": "jobs"}) == 0
    assert await pg.fetchval("SELECT count(*) FROM graphile_worker.jobs") == 0


async def _not(value: Any) -> bool:
    return not await value
