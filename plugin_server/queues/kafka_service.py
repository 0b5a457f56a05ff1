"""Kafka mode as a supervised service: the shared producer, the ingestion pipeline with its
Kafka-mode writer and dead letter queue, and the consumer feeding it (spec/ingestion.md §0.2).
Persons, distinct ids, definitions and group types are still written to Postgres; events,
recordings, groups and the persons' ClickHouse copies are produced to Kafka."""

from __future__ import annotations

from typing import Any

import asyncpg
from prometheus_client import Counter

from plugin_server.config import Settings
from plugin_server.context import AppContext
from plugin_server.ingestion.actions import ACTIONS, ActionCache
from plugin_server.ingestion.api import EventPluginRunner, NoPlugins
from plugin_server.ingestion.groups import GroupTypeStore
from plugin_server.ingestion.kafka_dead_letter import KafkaDeadLetterQueue
from plugin_server.ingestion.kafka_writer import KafkaEventWriter
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.queues.backpressure import downstream_load
from plugin_server.queues.celery_service import PLUGIN_RUNNER
from plugin_server.queues.kafka import KafkaIngestionConsumer
from plugin_server.queues.kafka_producer import BatchingProducer
from plugin_server.supervisor import Service

log = get_logger(__name__)

# Name under which the producer is published in AppContext.extras, for the other users of
# Kafka in Kafka mode: plugin log entries (`plugin_log_entries`) and plugins' posthog.capture.
KAFKA_PRODUCER = "kafka_producer"

OVERSIZED = Counter(
    "plugin_server_kafka_oversized_messages_total",
    "Person or group messages too large for the broker, not produced",
    registry=REGISTRY,
)


class KafkaProducerService:
    """The shared producer: connected before its users start, flushed after they stopped."""

    name = "kafka-producer"

    def __init__(self, producer: BatchingProducer) -> None:
        self.producer = producer

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()


class KafkaIngestion:
    name = "kafka-consumer"

    def __init__(self, ctx: AppContext, producer: BatchingProducer) -> None:
        self._ctx = ctx
        self._producer = producer
        self._ingestor: PostgresIngestor | None = None
        self._consumer: KafkaIngestionConsumer | None = None

    async def start(self) -> None:
        ctx, settings, producer = self._ctx, self._ctx.settings, self._producer
        dead_letters = KafkaDeadLetterQueue(producer)
        ingestor = kafka_mode_ingestor(
            ctx.postgres,
            settings,
            ctx.extras.get(PLUGIN_RUNNER) or NoPlugins(),
            producer,
            dead_letters,
            actions=ctx.extras.get(ACTIONS),
        )
        await ingestor.start()
        self._ingestor = ingestor
        self._consumer = KafkaIngestionConsumer(
            settings,
            ingestor,
            producer,
            dead_letters,
            instance_id=ctx.instance_id,
            on_batch=lambda: ctx.activity.touch("ingestEvent"),
            downstream=downstream_load(ctx.extras),
        )
        await self._consumer.start()

    async def run(self) -> None:
        if self._consumer is not None:
            await self._consumer.run()

    async def stop(self) -> None:
        """Stop consuming: the batch in progress is finished and committed (the producer is
        flushed and disconnected later, by its own service)."""
        if self._consumer is not None:
            await self._consumer.stop()
        if self._ingestor is not None:
            await self._ingestor.stop()

    def ready(self) -> tuple[bool, str]:
        if self._consumer is None:
            return False, "not started"
        return self._consumer.ready()


def kafka_mode_ingestor(
    pool: asyncpg.Pool,
    settings: Settings,
    plugins: EventPluginRunner,
    producer: BatchingProducer,
    dead_letters: KafkaDeadLetterQueue,
    *,
    actions: ActionCache | None = None,
) -> PostgresIngestor:
    """The ingestion pipeline writing for ClickHouse: events through the Kafka writer, the
    transaction's outbox produced after COMMIT, failures to the Kafka dead letter queue."""

    async def publish(messages: list[Any]) -> None:
        for record, error in await producer.queue_all(messages):
            # Postgres has the write; only its ClickHouse copy cannot be carried.
            OVERSIZED.inc()
            log.error("message too large for Kafka not produced", topic=record.topic, error=str(error))

    return PostgresIngestor(
        pool,
        settings,
        plugins,
        dead_letters,
        actions=actions,
        writer=KafkaEventWriter(GroupTypeStore(pool), producer.max_message_bytes),
        publish=publish,
    )


def kafka_producer_services(ctx: AppContext) -> list[Service]:
    """Kafka mode: the shared producer, published as extras[KAFKA_PRODUCER] when built, so the
    services built after it (plugin capture, logs, ingestion) can take it."""
    if not ctx.settings.kafka_enabled:
        return []
    producer = BatchingProducer.from_settings(ctx.settings, ctx.instance_id)
    ctx.extras[KAFKA_PRODUCER] = producer
    return [KafkaProducerService(producer)]


def kafka_services(ctx: AppContext) -> list[Service]:
    """Kafka mode: the topic consumer and its pipeline (after kafka_producer_services)."""
    if not ctx.settings.kafka_enabled:
        return []
    return [KafkaIngestion(ctx, ctx.extras[KAFKA_PRODUCER])]
