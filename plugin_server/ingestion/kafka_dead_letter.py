"""Kafka mode's dead letter queue: failed events go to `events_dead_letter_queue` with the
reason (spec/ingestion.md §3.3.6), so the input partition moves on without losing them.

Implements the DeadLetterQueue protocol of `dead_letter.py`. A record is queued on the shared
producer; it is durable once the producer's next flush returns, which the input consumer awaits
before committing its offsets (so a dead letter that is not delivered means a re-read event)."""

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
    "plugin_server_kafka_dead_letters_total",
    "Records produced to events_dead_letter_queue, by where the event failed",
    ["location"],
    registry=REGISTRY,
)


def error_location(stage: str) -> str:
    """The `error_location` column for a dead-letter stage name."""
    if stage.startswith("plugin_server_"):
        return stage  # already the original's name (the pipeline's plugin_server_ingest_event)
    if stage == "ingestion":
        return ERROR_LOCATION_INGEST
    if stage.endswith("parse"):
        return ERROR_LOCATION_PARSE
    return f"plugin_server_{stage}"


class KafkaDeadLetterQueue:
    def __init__(self, producer: BatchingProducer) -> None:
        self._producer = producer

    async def record(
        self,
        raw: bytes | str | None,
        error: str,
        stage: str,
        team_id: int | None = None,
        event: dict[str, Any] | None = None,
        *,
        message_id: bytes | None = None,
    ) -> None:
        """An event that failed (`event` given), or a message that could not be read as one
        (its raw text kept as `raw_payload`). `message_id` is not used: a message read again
        after a crash may be dead-lettered again (at least once, as every output topic)."""
        location = error_location(stage)
        if event is not None:
            record = dead_letter_record(event, error, location, max_bytes=self._producer.max_message_bytes)
        else:
            raw_text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
            known = {"team_id": team_id} if team_id is not None else {}
            record = dead_letter_record(
                known, error, location, raw_payload=raw_text, max_bytes=self._producer.max_message_bytes
            )
        await self._producer.queue(record)
        DEAD_LETTERED.labels(location).inc()
        uuid = event.get("uuid") if event is not None else None
        log.info(
            "🔔 sent to the dead letter queue", location=location, uuid=uuid, team_id=team_id, error=error
        )

    async def add_unparsable(
        self, raw: bytes | None, error: BaseException, envelope: Mapping[str, Any] | None = None
    ) -> None:
        """A Kafka message that is not an event: its raw text, and the envelope fields that
        could be read, so it can be inspected and replayed."""
        raw_text = (raw or b"").decode("utf-8", "replace")
        record = dead_letter_record(
            envelope or {},
            str(error),
            ERROR_LOCATION_PARSE,
            raw_payload=raw_text,
            max_bytes=self._producer.max_message_bytes,
        )
        await self._producer.queue(record)
        DEAD_LETTERED.labels(ERROR_LOCATION_PARSE).inc()
        log.warning("🔔 unreadable Kafka message sent to the dead letter queue", error=str(error))
