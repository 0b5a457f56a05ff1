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
from plugin_server.ingestion.api import EventPluginRunner, NoPlugins
from plugin_server.ingestion.groups import GroupTypeStore
from plugin_server.ingestion.kafka_dead_letter import KafkaDeadLetterQueue
from plugin_server.ingestion.kafka_writer import KafkaEventWriter
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.queues.celery_service import PLUGIN_RUNNER
from plugin_server.queues.kafka import KafkaIngestionConsumer
from plugin_server.queues.kafka_producer import BatchingProducer, MessageTooLarge
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


class KafkaIngestion:
    name = "kafka-consumer"

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._producer: BatchingProducer | None = None
        self._ingestor: PostgresIngestor | None = None
        self._consumer: KafkaIngestionConsumer | None = None

    async def start(self) -> None:
        ctx, settings = self._ctx, self._ctx.settings
        producer = BatchingProducer.from_settings(settings, ctx.instance_id)
        await producer.start()
        self._producer = producer
        ctx.extras[KAFKA_PRODUCER] = producer
        dead_letters = KafkaDeadLetterQueue(producer)
        ingestor = kafka_mode_ingestor(
            ctx.postgres, settings, ctx.extras.get(PLUGIN_RUNNER) or NoPlugins(), producer, dead_letters
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
        )
        await self._consumer.start()

    async def run(self) -> None:
        if self._consumer is not None:
            await self._consumer.run()

    async def stop(self) -> None:
        """Stop consuming (the batch in progress is finished and committed), then flush."""
        if self._consumer is not None:
            await self._consumer.stop()
        if self._ingestor is not None:
            await self._ingestor.stop()
        if self._producer is not None:
            await self._producer.stop()

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
) -> PostgresIngestor:
    """The ingestion pipeline writing for ClickHouse: events through the Kafka writer, the
    transaction's outbox produced after COMMIT, failures to the Kafka dead letter queue."""

    async def publish(messages: list[Any]) -> None:
        for record in messages:
            try:
                await producer.queue(record)
            except MessageTooLarge as exc:
                # Postgres has the write; only its ClickHouse copy cannot be carried.
                OVERSIZED.inc()
                log.error("message too large for Kafka not produced", topic=record.topic, error=str(exc))

    return PostgresIngestor(
        pool,
        settings,
        plugins,
        dead_letters,
        writer=KafkaEventWriter(GroupTypeStore(pool), producer.max_message_bytes),
        publish=publish,
    )


def kafka_services(ctx: AppContext) -> list[Service]:
    return [KafkaIngestion(ctx)] if ctx.settings.kafka_enabled else []
