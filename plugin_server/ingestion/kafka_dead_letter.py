"""Kafka mode's dead letter queue: failed events go to `events_dead_letter_queue` with the
reason (spec/ingestion.md §3.3.6), so the input partition can move on without losing them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter

from plugin_server.ingestion.kafka_messages import (
    ERROR_LOCATION_INGEST,
    ERROR_LOCATION_PARSE,
    dead_letter_record,
)
from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.queues.kafka_producer import BatchingProducer

log = get_logger(__name__)

DEAD_LETTERED = Counter(
    "plugin_server_events_dead_lettered_total",
    "Events sent to the dead letter queue, by where they failed",
    ["location"],
    registry=REGISTRY,
)


class KafkaDeadLetterQueue:
    """Queues dead-letter records on the shared producer. Delivery is confirmed by the
    producer's next flush, which the input consumer awaits before committing offsets."""

    def __init__(self, producer: BatchingProducer) -> None:
        self._producer = producer

    async def add(
        self,
        event: Mapping[str, Any],
        error: BaseException | object,
        location: str = ERROR_LOCATION_INGEST,
    ) -> None:
        record = dead_letter_record(event, error, location, max_bytes=self._producer.max_message_bytes)
        await self._producer.queue(record)
        DEAD_LETTERED.labels(location).inc()
        log.info(
            "🔔 event sent to the dead letter queue",
            location=location,
            uuid=event.get("uuid"),
            team_id=event.get("team_id"),
            error=str(error),
        )

    async def add_unparsable(
        self, raw: bytes | None, error: BaseException, envelope: Mapping[str, Any] | None = None
    ) -> None:
        """A queue message that is not an event: keep its raw text (and any envelope fields
        that could be read) so it can be inspected and replayed."""
        raw_text = (raw or b"").decode("utf-8", "replace")
        record = dead_letter_record(
            envelope or {},
            error,
            ERROR_LOCATION_PARSE,
            raw_payload=raw_text,
            max_bytes=self._producer.max_message_bytes,
        )
        await self._producer.queue(record)
        DEAD_LETTERED.labels(ERROR_LOCATION_PARSE).inc()
        log.warning("🔔 unreadable Kafka message sent to the dead letter queue", error=str(error))
