"""Redis goes down right after a batch committed, before it is acknowledged: the consumer waits
for Redis and acknowledges the batch then; it is not taken and ingested again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.ingestion.api import NoPlugins
from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.ingestion.pipeline import PostgresIngestor, PreparedBatch
from plugin_server.ingestion.types import IncomingEvent, Outcome
from plugin_server.metrics import REGISTRY
from plugin_server.queues.celery import CeleryConsumer
from tests.factories import TEAM_ID, create_team
from tests.faults.rig import QUEUE, event_message, wait_for
from tests.faults.services import RedisServer, redis_server


class RedisFailsAfterFirstCommit:
    """The real pipeline; the first commit takes Redis down just after the rows are committed."""

    def __init__(self, pipeline: PostgresIngestor, server: RedisServer) -> None:
        self._pipeline = pipeline
        self._server = server
        self.redis_stopped = asyncio.Event()

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]:
        return await self._pipeline.ingest(batch)

    async def prepare(self, batch: Sequence[IncomingEvent]) -> PreparedBatch:
        return await self._pipeline.prepare(batch)

    async def commit(self, prepared: PreparedBatch) -> list[Outcome]:
        outcomes = await self._pipeline.commit(prepared)
        if not self.redis_stopped.is_set():
            await asyncio.to_thread(self._server.stop, "kill")
            self.redis_stopped.set()
        return outcomes


def outcomes(outcome: str) -> float:
    return REGISTRY.get_sample_value("plugin_server_celery_events_total", {"outcome": outcome}) or 0.0


async def test_a_batch_committed_while_redis_goes_down_is_acknowledged_once_it_is_back(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    await create_team(pg, TEAM_ID, ingested_event=True)
    with redis_server() as server:
        redis = aioredis.Redis.from_url(server.url)
        pipeline = PostgresIngestor(pg, settings, NoPlugins(), PostgresDeadLetterQueue(pg))
        await pipeline.start()
        ingestor = RedisFailsAfterFirstCommit(pipeline, server)
        consumer = CeleryConsumer(
            redis,
            QUEUE,
            instance_id="ack",
            dead_letters=PostgresDeadLetterQueue(pg),
            ingestor=ingestor,
            batch_size=50,
        )
        async with redis.pipeline(transaction=False) as pipe:
            for seq in range(50):
                pipe.lpush(QUEUE, event_message(seq))
            await pipe.execute()
        counted_before = sum(outcomes(o.value) for o in Outcome)
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        try:
            await asyncio.wait_for(ingestor.redis_stopped.wait(), 60)
            assert await pg.fetchval("SELECT count(*) FROM posthog_event") == 50
            await wait_for(lambda: _not_ready(consumer), 30, "consumer reports Redis")
            await asyncio.to_thread(server.start)

            async def acknowledged() -> bool:
                try:
                    return consumer.ready()[0] and not await redis.llen(consumer.keys.processing("ack"))
                except Exception:
                    return False

            await wait_for(acknowledged, 60, "batch acknowledged")
        finally:
            await consumer.stop()
            await task
            await pipeline.stop()
            await redis.aclose()
    assert await pg.fetchval("SELECT count(*) FROM posthog_event") == 50
    # taken once: no outcome beyond the 50 first ones (a second take would count 50 more)
    assert sum(outcomes(o.value) for o in Outcome) - counted_before == 50


async def _not_ready(consumer: CeleryConsumer) -> bool:
    ready, reason = consumer.ready()
    return not ready and reason.startswith("redis:")
