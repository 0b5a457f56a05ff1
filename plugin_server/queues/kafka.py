"""Kafka mode's input: a consumer in group `clickhouse-ingestion` on KAFKA_CONSUMPTION_TOPIC
that hands fetched batches to the ingestion pipeline (spec/ingestion.md §1.2).

At least once, and never stuck:
* a batch's offsets are committed only after the pipeline returned for every event in it and the
  producer confirmed every message produced so far (outputs and dead letters alike);
* a message that is not an event is dead-lettered with its raw text (no poison pill);
* a batch that fails on an infrastructure error (Postgres, Redis, Kafka unreachable) is retried
  with back-off, for as long as it takes: its partitions wait, nothing is dropped;
* a batch that fails otherwise, or takes longer than KAFKA_BATCH_TIMEOUT_SECONDS, is retried one
  event at a time, and an event that fails twice alone is dead-lettered, so the partition moves on;
* on a rebalance the partitions are given up only after the batch in progress is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import ConsumerStoppedError
from prometheus_client import Counter, Histogram

from plugin_server.config import Settings
from plugin_server.ingestion.api import Ingestor, StagedIngestor
from plugin_server.ingestion.js import js_float, js_string
from plugin_server.ingestion.kafka_dead_letter import KafkaDeadLetterQueue
from plugin_server.ingestion.kafka_messages import ERROR_LOCATION_INGEST
from plugin_server.ingestion.types import IncomingEvent, PluginEvent
from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.queues.backpressure import BEHIND, Behind
from plugin_server.queues.failures import ingest_alone, is_infrastructure_error, time_limit
from plugin_server.queues.kafka_client import client_options
from plugin_server.queues.kafka_producer import BatchingProducer

log = get_logger(__name__)

GROUP_ID = "clickhouse-ingestion"
# Re-reads while a store is down are at most this far apart: work resumes within it once it is back.
MAX_BACKOFF_SECONDS = 1.0
_ONE_BY_ONE = object()  # a batch whose preparation failed: its events are ingested one at a time

BATCHES = Counter(
    "plugin_server_kafka_batches_total",
    "Batches taken from the Kafka topic, by result",
    ["result"],
    registry=REGISTRY,
)
MESSAGES = Counter(
    "plugin_server_kafka_messages_consumed_total", "Messages taken from the Kafka topic", registry=REGISTRY
)
BATCH_SECONDS = Histogram(
    "plugin_server_kafka_batch_duration_seconds",
    "Time to ingest and commit one Kafka batch",
    registry=REGISTRY,
)


class InvalidMessage(ValueError):
    """A queue message that cannot be read as an event."""

    def __init__(self, message: str, envelope: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.envelope = dict(envelope or {})


# ---------------------------------------------------------------------- parsing
_decode = msgspec.json.Decoder(float_hook=js_float).decode


def _loads(data: bytes | str) -> Any:
    try:
        return _decode(data)
    except msgspec.ValidationError:  # numbers beyond 64 bits: the standard parser keeps them
        return json.loads(data, parse_float=js_float)


def parse_event(value: bytes | None) -> PluginEvent:
    """A Kafka message value as a PluginEvent (§1.2.3): the envelope, overlaid by every
    top-level key of the JSON text in its `data` field."""
    if value is None:
        raise InvalidMessage("Kafka message has no value")
    try:
        envelope = _loads(value)
    except (msgspec.DecodeError, ValueError) as exc:
        raise InvalidMessage(f"Kafka message is not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise InvalidMessage("Kafka message is not a JSON object")
    data_text = envelope.pop("data", None)
    if not isinstance(data_text, str):
        raise InvalidMessage("Kafka message has no `data` text", envelope)
    try:
        data = _loads(data_text)
    except (msgspec.DecodeError, ValueError) as exc:
        raise InvalidMessage(f"Kafka message `data` is not JSON: {exc}", envelope) from None
    if not isinstance(data, dict):
        raise InvalidMessage("Kafka message `data` is not a JSON object", envelope)
    event: PluginEvent = {**envelope, **data}
    event["site_url"] = event.get("site_url") or None
    event["ip"] = event.get("ip") or None
    if event.get("distinct_id") is None:
        # `distinct_id?.toString()` left it undefined: the pipeline then reads "undefined".
        event.pop("distinct_id", None)
    else:
        event["distinct_id"] = js_string(event["distinct_id"])
    return event


def incoming_event(value: bytes | None) -> IncomingEvent:
    event = parse_event(value)
    team_id = event.get("team_id")
    return IncomingEvent(
        team_id=team_id if isinstance(team_id, int) and not isinstance(team_id, bool) else 0,
        event=event,
        raw=value or b"",
        source="kafka",
    )


# ---------------------------------------------------------------------- consumer
class KafkaIngestionConsumer:
    """A supervised service: `start` joins the group, `run` consumes until `stop`."""

    name = "kafka-consumer"

    def __init__(
        self,
        settings: Settings,
        ingestor: Ingestor,
        producer: BatchingProducer,
        dead_letters: KafkaDeadLetterQueue,
        *,
        instance_id: str = "",
        group_id: str = GROUP_ID,
        batch_size: int | None = None,
        session_timeout_ms: int = 10_000,
        on_batch: Callable[[], None] | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        downstream: Behind | None = None,
    ) -> None:
        self._settings = settings
        self._ingestor = ingestor
        self._staged: StagedIngestor[Any] | None = ingestor if isinstance(ingestor, StagedIngestor) else None
        self._producer = producer
        self._dead_letters = dead_letters
        self._instance_id = instance_id
        self._group_id = group_id
        self._topic = settings.kafka_consumption_topic
        self._batch_size = batch_size or settings.ingestion_batch_size
        self._batch_timeout = settings.kafka_batch_timeout_seconds
        self._sleep = sleep
        self._downstream = downstream  # why fetching the next batch should wait (back-pressure)
        self._on_batch = on_batch
        # A broker may wait up to this long for members when the group (re)forms.
        self._session_timeout_ms = session_timeout_ms
        self._consumer: Any = None
        self._batch_lock = asyncio.Lock()  # held while a batch is ingested and committed
        self._stopping = asyncio.Event()
        self._joined = False
        self._generation = 0  # bumped when partitions are revoked: older fetches are stale
        # The last ingested batch, while its output is confirmed and its offsets committed.
        self._pending: tuple[asyncio.Task[bool], Mapping[Any, list[Any]]] | None = None
        self._failed_batch: Mapping[Any, list[Any]] = {}
        self._backoff = 0
        self.events_seen = 0
        self.messages_committed = 0  # input messages whose offsets are committed

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            **client_options(self._settings, self._instance_id),
            group_id=self._group_id,
            isolation_level="read_committed",
            auto_offset_reset="latest",  # a new group starts at the end, as in the original
            enable_auto_commit=False,
            max_poll_interval_ms=max(300_000, int(self._batch_timeout * 3000)),
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=min(3_000, self._session_timeout_ms // 3),
        )
        await self._consumer.start()
        self._consumer.subscribe([self._topic], listener=_RebalanceListener(self))
        log.info("⏬ Kafka consumer subscribed", topic=self._topic, group=self._group_id)

    async def stop(self) -> None:
        """Finish the batch in progress (committing it), then leave the group."""
        self._stopping.set()
        async with self._batch_lock:
            await self._settle_previous()
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
            log.info("⏹ Kafka consumer stopped")

    def ready(self) -> tuple[bool, str]:
        if self._joined:
            return True, ""
        return False, f"not in Kafka consumer group {self._group_id} yet"

    @property
    def joined(self) -> bool:
        return self._joined

    async def run(self) -> None:
        while not self._stopping.is_set():
            consumer = self._consumer
            if consumer is None:
                return
            generation = self._generation
            if self._downstream is not None and (reason := self._downstream()):
                await self._wait_downstream(reason)
                continue
            try:
                fetched = await consumer.getmany(timeout_ms=500, max_records=self._batch_size)
            except ConsumerStoppedError:
                return
            if fetched and not self._stopping.is_set():
                await self._handle(fetched, generation)
            elif self._pending is not None and self._pending[0].done():
                # Idle: settle the last batch now, so one whose output failed is read again.
                async with self._batch_lock:
                    await self._settle_previous()

    async def _wait_downstream(self, reason: str) -> None:
        """Fetch no batch while the work batches hand on is behind; look again every 50 ms.
        (The group's heartbeats go on meanwhile.)"""
        assert self._downstream is not None
        log.warning("Kafka consumer waits: downstream work behind", reason=reason)
        BEHIND.labels(self.name).set(1)
        try:
            while not self._stopping.is_set() and self._downstream():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.05)
        finally:
            BEHIND.labels(self.name).set(0)

    # ------------------------------------------------------------------ batches
    async def _handle(self, fetched: Mapping[Any, Sequence[Any]], generation: int) -> None:
        async with self._batch_lock:
            consumer = self._consumer
            if consumer is None:
                return
            if generation != self._generation:
                # Partitions were revoked between the fetch and now: read these messages
                # again from where this batch started (a partition kept through the rebalance
                # would otherwise skip them), under the new assignment.
                self._rewind({tp: list(messages) for tp, messages in fetched.items() if messages})
                self._rewind(self._failed_batch)  # an unconfirmed batch before it comes first
                return
            assigned = consumer.assignment()
            # Messages of partitions revoked since the fetch belong to their new owner now.
            batch = {tp: list(messages) for tp, messages in fetched.items() if messages and tp in assigned}
            if not batch:
                return
            started = time.perf_counter()
            try:
                events = await self._parse(batch)
                prepared = await self._prepare(events)
            except Exception as exc:
                # Infrastructure: read the same messages again after a pause.
                self._rewind(batch)
                await self._settle_previous()
                await self._back_off("Kafka batch failed; it will be read again", exc)
                return
            # This batch was prepared (plugins included) while the one before was written, its
            # output acknowledged and its offsets committed; it is written only after that.
            if not await self._settle_previous():
                self._rewind(batch)
                self._rewind(self._failed_batch)  # earlier offsets win on shared partitions
                return
            task = asyncio.create_task(self._write_and_confirm(batch, events, prepared, started))
            self._pending = (task, batch)

    async def _settle_previous(self) -> bool:
        """Wait for the previous batch to be written and confirmed; False (and it is rewound) if
        writing it failed or its output was not acknowledged."""
        pending, self._pending = self._pending, None
        if pending is None:
            return True
        task, batch = pending
        failure: BaseException | None = None
        try:
            confirmed = await task
        except Exception as exc:  # writing it failed (infrastructure): read it again
            failure, confirmed = exc, False
        if confirmed:
            self._backoff = 0
            self._failed_batch = {}
            return True
        self._failed_batch = batch
        self._rewind(batch)
        await self._back_off(
            "Kafka batch not written or its output not acknowledged; it will be read again", failure
        )
        return False

    async def _write_and_confirm(
        self, batch: Mapping[Any, list[Any]], events: list[IncomingEvent], prepared: Any, started: float
    ) -> bool:
        """Write a prepared batch, then wait for its output to be acknowledged and commit its
        offsets; batches go through here one at a time, in order. Raises on an infrastructure
        failure (the batch is then read again)."""
        await self._write(events, prepared)
        await self._producer.send_batched()
        try:
            await self._producer.flush()
        except Exception as exc:
            log.error("Kafka output not acknowledged", error=repr(exc))
            return False
        if await self._commit(batch):
            self.messages_committed += sum(map(len, batch.values()))
        BATCHES.labels("committed").inc()
        BATCH_SECONDS.observe(time.perf_counter() - started)
        if self._on_batch is not None:
            self._on_batch()
        return True

    async def _back_off(self, message: str, exc: BaseException | None) -> None:
        BATCHES.labels("retried").inc()
        self._backoff += 1
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (self._backoff - 1))
        log.error(message, error=repr(exc) if exc else None, retry_in_s=delay, exc_info=exc)
        await self._sleep(delay)

    async def _parse(self, batch: Mapping[Any, list[Any]]) -> list[IncomingEvent]:
        """The batch's events; a message that is not one is dead-lettered."""
        events: list[IncomingEvent] = []
        for messages in batch.values():
            MESSAGES.inc(len(messages))
            for message in messages:
                try:
                    events.append(incoming_event(message.value))
                except InvalidMessage as exc:
                    await self._dead_letters.add_unparsable(message.value, exc, exc.envelope)
        self.events_seen += len(events)
        return events

    async def _prepare(self, events: list[IncomingEvent]) -> Any:
        """The batch prepared for `_write` (for a two-stage ingestor: plugins run, effects worked
        out, nothing saved); `_ONE_BY_ONE` when that failed for a reason of the events'."""
        if self._staged is None or not events:
            return events
        try:
            async with time_limit(self._batch_timeout, "the batch"):
                return await self._staged.prepare(events)
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            log.warning(
                "Kafka batch failed; retrying its events one by one", events=len(events), error=repr(exc)
            )
            return _ONE_BY_ONE

    async def _write(self, events: list[IncomingEvent], prepared: Any) -> None:
        if not events:
            return
        if prepared is not _ONE_BY_ONE:
            try:
                async with time_limit(self._batch_timeout, "the batch"):
                    if self._staged is None:
                        await self._ingestor.ingest(events)
                    else:
                        await self._staged.commit(prepared)
                return
            except Exception as exc:
                if is_infrastructure_error(exc):
                    raise
                log.warning(
                    "Kafka batch failed; retrying its events one by one", events=len(events), error=repr(exc)
                )
        for event in events:
            await self._ingest_alone(event)

    async def _ingest_alone(self, event: IncomingEvent) -> None:
        """Ingest one event; dead-letter it if it fails twice for a reason of its own."""
        result = await ingest_alone(self._ingestor, event, self._sleep, self._batch_timeout)
        if isinstance(result, Exception):
            await self._dead_letters.record(
                event.raw, str(result), ERROR_LOCATION_INGEST, event.team_id, event.event
            )

    def _rewind(self, batch: Mapping[Any, list[Any]]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        assigned = consumer.assignment()
        for tp, messages in batch.items():
            if tp in assigned:
                consumer.seek(tp, messages[0].offset)

    async def _commit(self, batch: Mapping[Any, list[Any]]) -> bool:
        from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError
        from aiokafka.structs import OffsetAndMetadata

        offsets = {tp: OffsetAndMetadata(messages[-1].offset + 1, "") for tp, messages in batch.items()}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # The partitions moved to another member, which reads them from the last commit:
            # these events may come out twice, none is lost.
            log.warning("Kafka offsets not committed (group rebalanced)", error=repr(exc))
            return False
        return True


class _RebalanceListener(ConsumerRebalanceListener):
    """Gives partitions up only between batches, so a batch is committed by the member that
    ingested it; marks the consumer ready once it has joined the group."""

    def __init__(self, owner: KafkaIngestionConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if not revoked:
            return
        async with self._owner._batch_lock:
            await self._owner._settle_previous()
            self._owner._generation += 1
        log.info("Kafka partitions revoked", partitions=len(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        consumer = self._owner._consumer
        if consumer is not None:
            # Resolve where each partition starts (committed offset, or the log end for a new
            # group) before reporting ready, so events produced after readiness are all read.
            for tp in assigned:
                try:
                    await consumer.position(tp)
                except Exception as exc:  # e.g. revoked again meanwhile; the next join retries
                    log.warning("Kafka partition position not resolved", partition=str(tp), error=repr(exc))
        self._owner._joined = True
        log.info("✅ Kafka consumer joined group", group=self._owner._group_id, partitions=len(assigned))
