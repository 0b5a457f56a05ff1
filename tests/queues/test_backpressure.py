"""Back-pressure: the Celery consumer takes no batch while the work batches hand on is behind,
and takes them all once it caught up; nothing is dropped."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.metrics import REGISTRY
from plugin_server.queues.backpressure import EXPORT_LIMIT, ON_EVENT_LIMIT, downstream_load
from plugin_server.queues.celery import CeleryConsumer
from tests.queues.test_celery_consumer import (
    QUEUE,
    RecordingIngestor,
    consuming,
    event_message,
    push,
    wait_until,
)


def waiting() -> float:
    return (
        REGISTRY.get_sample_value(
            "plugin_server_ingestion_waiting_for_downstream", {"consumer": "celery-consumer"}
        )
        or 0.0
    )


async def test_consumption_waits_while_downstream_is_behind_and_resumes_after(
    redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    behind: list[str] = ["onEvent behind"]
    ingestor = RecordingIngestor()
    consumer = CeleryConsumer(
        redis,
        QUEUE,
        instance_id="backpressure",
        dead_letters=PostgresDeadLetterQueue(pg),
        ingestor=ingestor,
        downstream=lambda: behind[0] if behind else None,
    )
    await push(redis, [event_message(i) for i in range(30)])
    async with consuming(consumer):
        await wait_until(lambda: waiting() == 1)
        assert await redis.llen(QUEUE) == 30  # nothing taken while behind
        assert ingestor.batches == []
        behind.clear()
        await wait_until(lambda: len(ingestor.seqs) == 30)
        assert waiting() == 0
    assert ingestor.seqs == list(range(30))


def test_downstream_load_names_what_is_behind() -> None:
    extras: dict[str, Any] = {}
    behind = downstream_load(extras)
    assert behind() is None  # nothing published yet
    extras["plugin_runner"] = SimpleNamespace(deferred_events=ON_EVENT_LIMIT - 1)
    extras["export_buffers"] = SimpleNamespace(pending_events=lambda: EXPORT_LIMIT - 1)
    extras["job_queues"] = SimpleNamespace(paused=False)
    assert behind() is None
    extras["plugin_runner"].deferred_events = ON_EVENT_LIMIT
    assert behind() == f"onEvent/onSnapshot behind: {ON_EVENT_LIMIT} events waiting"
    extras["plugin_runner"].deferred_events = 0
    extras["export_buffers"] = SimpleNamespace(pending_events=lambda: EXPORT_LIMIT)
    assert behind() == f"exportEvents behind: {EXPORT_LIMIT} events buffered or exporting"
    extras["export_buffers"] = SimpleNamespace(pending_events=lambda: 0)
    extras["job_queues"].paused = True
    assert behind() == "job queue paused: plugin workers full"
