"""Python plugins joined to the host services, through the real server: schedule, scheduled
tasks, jobs (with RetryError), export buffers, posthog.capture, GeoIP and fetch."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from tests.integration.conftest import QUEUE, celery_event, runner_of, service, storage, wait_until
from tests.plugins.conftest import add_python_plugin


async def test_9_2_03_schedule_discovery(
    pg: asyncpg.Pool, team: int, settings: Settings, run_server: Any
) -> None:
    await add_python_plugin(
        pg,
        """
        def setup_plugin(meta):
            pass

        def process_event(event, meta):
            return event

        def run_every_minute(meta):
            pass
        """,
    )
    async with run_server(settings) as server:
        runner = runner_of(server)
        assert await runner.schedule() == {"runEveryMinute": [39], "runEveryHour": [], "runEveryDay": []}
        # what the scheduler reads from the plugin host
        host = server.ctx.extras["plugins"]
        assert dict(host.scheduled_configs()) == {
            "runEveryMinute": [39],
            "runEveryHour": [],
            "runEveryDay": [],
        }


async def test_scheduled_task_is_dispatched_by_the_scheduler(
    pg: asyncpg.Pool, team: int, settings: Settings, run_server: Any
) -> None:
    await add_python_plugin(
        pg,
        """
        async def run_every_hour(meta):
            await meta.storage.set("ran", meta.config["word"])
        """,
        config={"word": "tick"},
    )
    async with run_server(settings) as server:
        scheduler = service(server, "scheduler")
        await runner_of(server).wait_loaded()
        await wait_until(lambda: _true(scheduler.lock.held))
        assert await scheduler.dispatch("runEveryHour", period=1_000_000.0) == [39]
        # the same period claimed again (another server, a lock hand-over) runs nothing
        assert await scheduler.dispatch("runEveryHour", period=1_000_000.0) == []
        await scheduler.wait_for_pending(10)
        assert await storage(pg) == {"ran": '"tick"'}


async def _true(value: Any) -> Any:
    return value


async def test_6_8_104_job_enqueued_by_process_event_runs_and_retries(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    await add_python_plugin(
        pg,
        """
        from posthog_plugin import RetryError

        async def reply(payload, meta):
            await meta.storage.set("reply", payload)
            await meta.cache.incr("replies")

        async def flaky(payload, meta):
            attempt = await meta.cache.incr("flaky-attempts")
            if attempt < 2:
                raise RetryError("not yet")
            await meta.storage.set("flaky", {"payload": payload, "attempt": attempt})

        jobs = {"reply": reply, "flaky": flaky}

        def process_event(event, meta):
            if event["properties"].get("job"):
                meta.jobs[event["properties"]["job"]]({"seq": event["properties"]["seq"]}).run_now()
            return event
        """,
    )
    async with run_server(settings):
        await redis.lpush(QUEUE, celery_event(1, job="reply"), celery_event(2, job="flaky"))

        async def replied() -> Any:
            return (await storage(pg)).get("reply")

        assert json.loads(await wait_until(replied)) == {"seq": 1}
        # the job's cache increment comes after its storage write: wait for it too
        assert await wait_until(lambda: redis.get("@plugin/60/2/replies")) == b"1"

        async def retried() -> Any:
            return (await storage(pg)).get("flaky")

        # the first run raised RetryError: graphile's back-off runs it again ~2.7 s later
        assert json.loads(await wait_until(retried, 20)) == {"payload": {"seq": 2}, "attempt": 2}
    assert await pg.fetchval("SELECT count(*) FROM posthog_event") == 2
    # the retried job completed: no row left in the queue
    assert await pg.fetchval("SELECT count(*) FROM graphile_worker.jobs") == 0
