"""The graphile-compatible job queue against real Postgres and Redis (services §5, §9.3)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.db.migrate import migrate
from plugin_server.services.jobs import (
    DEFAULT_MAX_ATTEMPTS,
    EnqueuedJob,
    GraphileJobQueue,
    JobQueueConsumer,
    JobQueueError,
    JobQueueManager,
    build_job_queues,
    job_from_celery_plugin_job,
    migrate_job_queue,
    unit_ms,
)
from plugin_server.services.plugin_host import JobRetry
from tests.conftest import REDIS_URL
from tests.waiting import wait_for

SCHEMA = "graphile_worker"


def job(payload: Any = None, *, due_in_ms: int = 0, type_: str = "pluginJob") -> EnqueuedJob:
    return EnqueuedJob(type_, payload, int(time.time() * 1000) + due_in_ms, 2, 3)


async def test_9_10_37_migration_creates_graphile_schema_once(pg: asyncpg.Pool, pg_dsn: str) -> None:
    ids = [r["id"] for r in await pg.fetch("SELECT id FROM graphile_worker.migrations ORDER BY id")]
    assert ids == list(range(1, 9))
    tables = {
        r["tablename"]
        for r in await pg.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", SCHEMA)
    }
    assert tables == {"migrations", "jobs", "job_queues", "known_crontabs"}
    assert await migrate(pg_dsn) == []  # a second run is a no-op
    functions = {
        r["proname"]
        for r in await pg.fetch(
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE nspname = $1",
            SCHEMA,
        )
    }
    assert {"add_job", "get_job", "complete_job", "fail_job", "remove_job", "complete_jobs"} <= functions


async def test_9_10_38_enqueued_job_row(pg: asyncpg.Pool) -> None:
    queue = GraphileJobQueue(schema=SCHEMA, pool=pg)
    await queue.connect_producer()
    due = job({"key": "value"}, due_in_ms=60_000)
    await queue.enqueue(due)
    row = await pg.fetchrow("SELECT *, payload::text AS payload_text FROM graphile_worker.jobs")
    assert row["task_identifier"] == "pluginJob"
    assert row["queue_name"] is None
    # Retries are on (services §10.6 recommends completing only after the handler ran)
    assert row["max_attempts"] == DEFAULT_MAX_ATTEMPTS
    assert abs(row["run_at"].timestamp() * 1000 - due.timestamp) < 1
    assert json.loads(row["payload_text"]) == due.to_json()


async def test_9_3_12_future_job_delivered_unchanged_when_due(pg: asyncpg.Pool) -> None:
    queue = GraphileJobQueue(schema=SCHEMA, pool=pg, poll_interval=5.0)
    await queue.connect_producer()
    sent = job({"key": "value"}, due_in_ms=1500)
    received: list[tuple[float, EnqueuedJob]] = []

    async def handler(j: EnqueuedJob) -> None:
        received.append((time.time() * 1000, j))

    await queue.start_consumer(handler)
    try:
        await queue.enqueue(sent)
        await wait_for(lambda: received)
    finally:
        await queue.stop_consumer()
    at, got = received[0]
    assert got == sent
    assert at >= sent.timestamp
    assert await pg.fetchval("SELECT count(*) FROM graphile_worker.jobs") == 0


async def test_new_job_wakes_consumer_without_polling(pg: asyncpg.Pool) -> None:
    queue = GraphileJobQueue(schema=SCHEMA, pool=pg, poll_interval=60.0)
    await queue.connect_producer()
    received: list[EnqueuedJob] = []

    async def handler(j: EnqueuedJob) -> None:
        received.append(j)

    await queue.start_consumer(handler)
    try:
        await asyncio.sleep(0.2)  # consumers are idle, waiting up to a minute
        await queue.enqueue(job({"n": 1}))
        await wait_for(lambda: received, within=5)  # LISTEN jobs:insert woke them
    finally:
        await queue.stop_consumer()


async def test_failing_job_is_retried_with_backoff_then_succeeds(pg: asyncpg.Pool) -> None:
    queue = GraphileJobQueue(schema=SCHEMA, pool=pg, poll_interval=0.5)
    await queue.connect_producer()
    attempts: list[float] = []

    async def handler(j: EnqueuedJob) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise JobRetry("upstream down")

    await queue.enqueue(job({"x": 1}))
    await queue.start_consumer(handler)
    try:
        await wait_for(lambda: len(attempts) >= 2, within=10)
        await wait_for(lambda: True)
    finally:
        await queue.stop_consumer()
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 2.5  # fail_job's back-off: e^1 s
    assert await pg.fetchval("SELECT count(*) FROM graphile_worker.jobs") == 0


async def test_failed_job_keeps_its_error_and_gives_up_after_max_attempts(pg: asyncpg.Pool) -> None:
    queue = GraphileJobQueue(schema=SCHEMA, pool=pg, max_attempts=1, poll_interval=0.2)
    await queue.connect_producer()
    calls = 0

    async def handler(j: EnqueuedJob) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    await queue.enqueue(job())
    await queue.start_consumer(handler)
    try:
        await wait_for(lambda: calls == 1)
        await asyncio.sleep(0.5)
    finally:
        await queue.stop_consumer()
    row = await pg.fetchrow("SELECT attempts, max_attempts, last_error, locked_by FROM graphile_worker.jobs")
    assert calls == 1
    assert (row["attempts"], row["max_attempts"], row["locked_by"]) == (1, 1, None)
    assert row["last_error"] == "RuntimeError: boom"


async def test_unreadable_job_is_kept_without_retry_and_the_next_flows(pg: asyncpg.Pool) -> None:
    queue = GraphileJobQueue(schema=SCHEMA, pool=pg, poll_interval=0.2)
    await queue.connect_producer()
    await pg.execute("SELECT graphile_worker.add_job('pluginJob', '{\"nonsense\": true}'::json)")
    received: list[EnqueuedJob] = []

    async def handler(j: EnqueuedJob) -> None:
        received.append(j)

    await queue.start_consumer(handler)
    try:
        await queue.enqueue(job({"ok": True}))
        await wait_for(lambda: received)
    finally:
        await queue.stop_consumer()
    assert [j.payload for j in received] == [{"ok": True}]
    left = await pg.fetchrow("SELECT attempts, max_attempts, last_error FROM graphile_worker.jobs")
    assert left["attempts"] == left["max_attempts"]
    assert left["last_error"].startswith("unreadable job")


async def test_pause_holds_jobs_until_resume(pg: asyncpg.Pool) -> None:
    queue = GraphileJobQueue(schema=SCHEMA, pool=pg, poll_interval=0.1)
    await queue.connect_producer()
    received: list[EnqueuedJob] = []

    async def handler(j: EnqueuedJob) -> None:
        received.append(j)

    await queue.start_consumer(handler)
    try:
        queue.pause()
        await asyncio.sleep(0.3)  # workers finish their idle wait and park
        await queue.enqueue(job())
        await asyncio.sleep(0.5)
        assert received == []
        queue.resume()
        await wait_for(lambda: received)
    finally:
        await queue.stop_consumer()


async def test_9_3_14_unreachable_queue_does_not_crash_and_enqueue_fails(pg: asyncpg.Pool) -> None:
    manager = build_job_queues(
        ["graphile"], schema=SCHEMA, dsn="postgres://127.0.0.1:9/database", pool=None, crash_if_none=False
    )
    await manager.connect()
    assert manager.configured_kinds == ["graphile"]
    assert manager.connected_kinds == []
    with pytest.raises(JobQueueError, match="No JobQueue available"):
        await manager.enqueue(job())


async def test_9_3_15_unreachable_queue_with_crash_flag_raises() -> None:
    manager = build_job_queues(
        ["graphile"], schema=SCHEMA, dsn="postgres://127.0.0.1:9/database", pool=None, crash_if_none=True
    )
    with pytest.raises(JobQueueError):
        await manager.connect()


async def test_enqueue_falls_back_to_the_next_backend(pg: asyncpg.Pool) -> None:
    manager = JobQueueManager(
        [
            GraphileJobQueue(schema="graphile_missing", pool=pg),
            GraphileJobQueue(schema=SCHEMA, pool=pg),
        ]
    )
    await manager.enqueue(job({"fallback": 1}))  # the first backend's schema does not exist
    assert await pg.fetchval("SELECT count(*) FROM graphile_worker.jobs") == 1


class RecordingJobs:
    def __init__(self) -> None:
        self.runs: list[tuple[int, str, Any]] = []

    async def run_job(self, plugin_config_id: int, job_type: str, payload: Any) -> None:
        self.runs.append((plugin_config_id, job_type, payload))


async def test_9_10_45_only_the_lock_holder_consumes(pg: asyncpg.Pool, redis: aioredis.Redis) -> None:
    hosts = [RecordingJobs(), RecordingJobs()]
    consumers = []
    for host in hosts:
        manager = JobQueueManager([GraphileJobQueue(schema=SCHEMA, pool=pg, poll_interval=0.1)])
        await manager.connect()
        consumers.append(
            JobQueueConsumer(manager, host, aioredis.Redis.from_url(REDIS_URL), lock_ttl_seconds=2)
        )
    for consumer in consumers:
        await consumer.start()
    try:
        await wait_for(lambda: any(c.lock.held for c in consumers))
        producer = GraphileJobQueue(schema=SCHEMA, pool=pg)
        for i in range(10):
            await producer.enqueue(job({"i": i}, type_="logReply"))
        await wait_for(lambda: sum(len(h.runs) for h in hosts) == 10)
        holder = next(i for i, c in enumerate(consumers) if c.lock.held)
        assert len(hosts[holder].runs) == 10
        assert hosts[1 - holder].runs == []
        # the holder stops: the other takes the lock and the jobs
        await consumers[holder].stop()
        await wait_for(lambda: consumers[1 - holder].lock.held, within=5)
        await producer.enqueue(job({"i": 10}, type_="logReply"))
        await wait_for(lambda: len(hosts[1 - holder].runs) == 1)
    finally:
        for consumer in consumers:
            await consumer.stop()


def test_run_in_units() -> None:
    assert unit_ms("second") == 1000
    assert unit_ms("minutes") == 60_000
    assert unit_ms("week") == 7 * 86_400_000
    assert unit_ms("month") == 30 * 86_400_000
    assert unit_ms("months", js_months=True) == 30 * 7 * 86_400_000  # the JS runtime keeps 30 weeks
    with pytest.raises(ValueError, match="Unknown time unit: fortnights"):
        unit_ms("fortnight")


def test_9_9_33_celery_plugin_job_becomes_a_job() -> None:
    made = job_from_celery_plugin_job([2, 39, "someJobName", "start", {"a": 1}], now_ms=1234)
    assert made.to_json() == {
        "type": "someJobName",
        "payload": {"a": 1, "$operation": "start"},
        "timestamp": 1234,
        "pluginConfigId": 39,
        "pluginConfigTeam": 2,
    }


async def test_job_queue_schema_in_a_separate_database_and_schema(pg: asyncpg.Pool, pg_dsn: str) -> None:
    """JOB_QUEUE_GRAPHILE_URL / _SCHEMA: installed once, idempotently, under the given schema."""
    await migrate_job_queue(pg_dsn, "graphile_other")
    await migrate_job_queue(pg_dsn, "graphile_other")
    ids = [r["id"] for r in await pg.fetch("SELECT id FROM graphile_other.migrations ORDER BY id")]
    assert ids == list(range(1, 9))
    queue = GraphileJobQueue(schema="graphile_other", dsn=pg_dsn)
    await queue.connect_producer()
    await queue.enqueue(job({"separate": True}))
    await queue.disconnect()
    assert await pg.fetchval("SELECT count(*) FROM graphile_other.jobs") == 1
    await pg.execute("DROP SCHEMA graphile_other CASCADE")
