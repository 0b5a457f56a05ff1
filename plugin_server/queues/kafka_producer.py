"""The Kafka producer every Kafka-mode writer shares: records are batched in memory and handed
to aiokafka when the batch is full (count or bytes), old, or flushed (spec/services.md §8.1).

Two steps are kept apart so the input consumer can be exact about durability: a *send* hands a
batch to the client library (it returns once queued there); `flush()` sends what is batched and
then waits until the broker has acknowledged every message sent so far, raising
`KafkaDeliveryError` if any was refused. The consumer commits its input offsets only after a
successful `flush()`, so a lost output means a re-processed input, never a lost event.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter, Histogram

from plugin_server.config import Settings
from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.queues.kafka_client import client_options

log = get_logger(__name__)

# The broker's default largest message; a message is refused before queueing above this
# (less room for the record-batch framing) so one oversized event can be dead-lettered
# instead of failing a whole batch.
MAX_REQUEST_BYTES = 1_048_576
_FRAMING_BYTES = 1024
# A null value counts as 4 bytes toward the batch size, as in the original.
_NULL_VALUE_BYTES = 4

MESSAGES_PRODUCED = Counter(
    "plugin_server_kafka_messages_produced_total",
    "Messages acknowledged by the Kafka broker",
    ["topic"],
    registry=REGISTRY,
)
SEND_FAILURES = Counter(
    "plugin_server_kafka_send_failures_total",
    "Messages the Kafka broker did not acknowledge",
    registry=REGISTRY,
)
FLUSH_SECONDS = Histogram(
    "plugin_server_kafka_flush_duration_seconds",
    "Time to hand one producer batch to the Kafka client",
    registry=REGISTRY,
)


@dataclass(slots=True, frozen=True)
class KafkaMessage:
    value: bytes | None
    key: bytes | None = None


@dataclass(slots=True)
class ProducerRecord:
    """Messages for one topic, queued and sent together (kafkajs' ProducerRecord)."""

    topic: str
    messages: list[KafkaMessage] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(_NULL_VALUE_BYTES if m.value is None else len(m.value) for m in self.messages)


class MessageTooLarge(ValueError):
    """A message is bigger than the broker accepts; it was not queued."""


class KafkaDeliveryError(RuntimeError):
    """The broker did not acknowledge one or more sent messages."""


class SendingClient(Protocol):
    """What the batching producer needs of aiokafka's AIOKafkaProducer."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any: ...


class BatchingProducer:
    def __init__(
        self,
        client: SendingClient,
        *,
        max_queue_size: int,
        max_batch_bytes: int,
        flush_frequency_ms: int,
        max_message_bytes: int = MAX_REQUEST_BYTES - _FRAMING_BYTES,
        clock: Callable[[], float] = time.monotonic,
        periodic_flush: bool = True,
    ) -> None:
        self._client = client
        self.max_queue_size = max_queue_size
        self.max_batch_bytes = max_batch_bytes
        self.flush_frequency_s = flush_frequency_ms / 1000
        self.max_message_bytes = max_message_bytes
        self._clock = clock
        self._periodic_flush = periodic_flush
        self.batch: list[ProducerRecord] = []
        self.batch_bytes = 0
        self.last_flush = clock()
        self.sends = 0  # batches handed to the client (observability and tests)
        self._send_lock = asyncio.Lock()  # batches reach the client in the order they were cut
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._errors: list[BaseException] = []
        self._timer: asyncio.Task[None] | None = None
        self._callbacks: dict[tuple[str, int], Callable[[asyncio.Future[Any]], None]] = {}
        self._partition_cache: dict[str, tuple[float, list[int]]] = {}
        self._spread = 0

    @classmethod
    def from_settings(cls, settings: Settings, instance_id: str = "") -> BatchingProducer:
        from aiokafka import AIOKafkaProducer

        client = AIOKafkaProducer(
            **client_options(settings, instance_id),
            acks="all",
            linger_ms=0,  # batching happens here; the client sends what it is handed
            max_batch_size=512 * 1024,
            max_request_size=MAX_REQUEST_BYTES,
        )
        return cls(
            client,
            max_queue_size=settings.kafka_producer_max_queue_size,
            max_batch_bytes=settings.kafka_max_message_batch_size,
            flush_frequency_ms=settings.kafka_flush_frequency_ms,
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._client.start()
        if self._periodic_flush and self.flush_frequency_s > 0:
            self._timer = asyncio.create_task(self._flush_periodically(), name="kafka-producer-flush")

    async def stop(self) -> None:
        """Send what is batched, wait for the broker, and disconnect."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        try:
            await self.flush()
        except KafkaDeliveryError as exc:
            log.error("Kafka messages were not delivered before stopping", error=str(exc))
        finally:
            await self._client.stop()

    # ------------------------------------------------------------------ producing
    async def queue(self, record: ProducerRecord) -> None:
        """Add a record to the batch, sending the batch when a limit is reached.

        Raises MessageTooLarge (queueing nothing) if a message exceeds what the broker takes."""
        await self._add(record, self._admit(record))

    async def queue_all(self, records: list[ProducerRecord]) -> list[tuple[ProducerRecord, MessageTooLarge]]:
        """`queue` each record in order; a record with a message too large for the broker is
        left out and returned with its error, the others are queued."""
        refused: list[tuple[ProducerRecord, MessageTooLarge]] = []
        for record in records:
            try:
                size = self._admit(record)
            except MessageTooLarge as exc:
                refused.append((record, exc))
                continue
            await self._add(record, size)
        return refused

    def _admit(self, record: ProducerRecord) -> int:
        """The record's batch size; raises MessageTooLarge if one message can never be sent."""
        size = 0
        for message in record.messages:
            value, key = message.value, message.key
            value_bytes = len(value) if value is not None else 0
            message_bytes = value_bytes + (len(key) if key is not None else 0)
            if message_bytes > self.max_message_bytes:
                raise MessageTooLarge(
                    f"Kafka message for {record.topic} has {message_bytes} bytes; "
                    f"at most {self.max_message_bytes} fit"
                )
            size += value_bytes if value is not None else _NULL_VALUE_BYTES
        return size

    async def _add(self, record: ProducerRecord, size: int) -> None:
        if self.batch_bytes + size > self.max_batch_bytes:
            if size > self.max_batch_bytes:
                # Too big for any batch: send what is batched, then this record on its own
                # (the original dropped it when the batch was empty).
                await self._send(self._cut())
                await self._send([record])
            else:
                # Cut before sending so records queued meanwhile go to the next batch, in order.
                await self._send(self._cut(carry=record, carry_size=size))
            return
        self.batch.append(record)
        self.batch_bytes += size
        if len(self.batch) >= self.max_queue_size or self._clock() - self.last_flush > self.flush_frequency_s:
            await self._send(self._cut())

    async def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Queue one message (the interface plugin capture uses)."""
        await self.queue(ProducerRecord(topic, [KafkaMessage(value, key)]))

    async def send_batched(self) -> None:
        """Hand what is batched to the client now, without waiting for the broker."""
        await self._send(self._cut())

    async def flush(self) -> None:
        """Send the batch, then wait until every message sent so far is acknowledged.

        Raises KafkaDeliveryError if any message sent since the previous flush was refused."""
        await self._send(self._cut())
        async with self._send_lock:  # batches cut earlier are handed over before this point
            waiting = list(self._in_flight)
        if waiting:
            await asyncio.wait(waiting)
        if self._errors:
            errors, self._errors = self._errors, []
            raise KafkaDeliveryError(f"{len(errors)} Kafka message(s) not delivered: {errors[0]!r}")

    # ------------------------------------------------------------------ internals
    def _cut(self, carry: ProducerRecord | None = None, carry_size: int = 0) -> list[ProducerRecord]:
        records = self.batch
        if not records:
            if carry is not None:
                self.batch, self.batch_bytes = [carry], carry_size
            return []
        self.batch = [carry] if carry is not None else []
        self.batch_bytes = carry_size
        self.last_flush = self._clock()
        return records

    async def _send(self, records: list[ProducerRecord]) -> None:
        if not records:
            return
        started = time.perf_counter()
        async with self._send_lock:
            self.sends += 1
            if hasattr(self._client, "create_batch"):
                await self._send_as_batches(records)
            else:
                for record in records:
                    for message in record.messages:
                        await self._send_one(record.topic, message)
        FLUSH_SECONDS.observe(time.perf_counter() - started)

    async def _send_one(self, topic: str, message: KafkaMessage) -> None:
        try:
            delivery = await self._client.send(topic, value=message.value, key=message.key)
        except Exception as exc:
            self._record_failure(topic, exc)
            return
        self._track(delivery, topic, 1)

    async def _send_as_batches(self, records: list[ProducerRecord]) -> None:
        """One record batch per partition instead of one client call per message (the
        per-message path costs more than the rest of Kafka mode together). Partitions are
        chosen as the client's default partitioner does: murmur2 of the key, else spread."""
        client: Any = self._client
        open_batches: dict[tuple[str, int], tuple[Any, list[int]]] = {}
        for record in records:
            topic = record.topic
            try:
                partitions = await self._partitions(topic)
            except Exception as exc:
                self._record_failure(topic, exc, len(record.messages))
                continue
            for message in record.messages:
                key = message.key
                if key is None:
                    self._spread = (self._spread + 1) % len(partitions)
                    partition = partitions[self._spread]
                else:
                    partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
                slot = (topic, partition)
                entry = open_batches.get(slot)
                if entry is None:
                    entry = open_batches[slot] = (client.create_batch(), [0])
                builder, count = entry
                if builder.append(key=message.key, value=message.value, timestamp=None) is None:
                    if count[0] == 0:  # bigger than a whole batch: on its own
                        await self._send_one(topic, message)
                        continue
                    await self._ship(builder, topic, partition, count[0])
                    entry = open_batches[slot] = (client.create_batch(), [0])
                    builder, count = entry
                    if builder.append(key=message.key, value=message.value, timestamp=None) is None:
                        await self._send_one(topic, message)
                        continue
                count[0] += 1
        for (topic, partition), (builder, count) in open_batches.items():
            if count[0]:
                await self._ship(builder, topic, partition, count[0])

    async def _ship(self, builder: Any, topic: str, partition: int, count: int) -> None:
        client: Any = self._client
        try:
            delivery = await client.send_batch(builder, topic, partition=partition)
        except Exception as exc:
            self._record_failure(topic, exc, count)
            return
        self._track(delivery, topic, count)

    async def _partitions(self, topic: str) -> list[int]:
        known = self._partition_cache.get(topic)
        now = time.monotonic()
        if known is not None and now - known[0] < 60:
            return known[1]
        client: Any = self._client
        partitions = sorted(await client.partitions_for(topic))
        self._partition_cache[topic] = (now, partitions)
        return partitions

    def _track(self, delivery: asyncio.Future[Any], topic: str, count: int) -> None:
        self._in_flight.add(delivery)
        delivery.add_done_callback(self._delivered_callback(topic, count))

    def _delivered_callback(self, topic: str, count: int) -> Callable[[asyncio.Future[Any]], None]:
        if (known := self._callbacks.get((topic, count))) is not None:
            return known

        def delivered(future: asyncio.Future[Any]) -> None:
            self._in_flight.discard(future)
            if future.cancelled():
                failure: BaseException = asyncio.CancelledError("delivery cancelled")
            elif (exc := future.exception()) is not None:
                failure = exc
            else:
                produced.inc(count)
                return
            self._record_failure(topic, failure, count)

        produced = MESSAGES_PRODUCED.labels(topic)
        if len(self._callbacks) < 10_000:
            self._callbacks[(topic, count)] = delivered
        return delivered

    def _record_failure(self, topic: str, exc: BaseException, count: int = 1) -> None:
        SEND_FAILURES.inc(count)
        if len(self._errors) < 1000:
            self._errors.append(exc)
        log.warning("Kafka messages not delivered", topic=topic, messages=count, error=repr(exc))

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_frequency_s)
            try:
                await self._send(self._cut())
            except Exception as exc:  # the next flush() reports delivery failures
                log.warning("periodic Kafka flush failed", error=repr(exc))


_WORDS = [struct.Struct(f"<{n}I") for n in range(65)]  # keys are mostly uuids: 9 words


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of a key (the Java client's `Utils.murmur2`), equal to aiokafka's
    pure-Python one at about half its cost: the 4-byte words are read in one `struct` call."""
    mask, m = 0xFFFFFFFF, 0x5BD1E995
    length = len(data)
    h = 0x9747B28C ^ length
    words = length // 4
    unpack = _WORDS[words].unpack_from if words < len(_WORDS) else struct.Struct(f"<{words}I").unpack_from
    for k in unpack(data):
        k = (k * m) & mask
        k = ((k ^ (k >> 24)) * m) & mask
        h = ((h * m) & mask) ^ k
    tail = length & ~3
    extra = length & 3
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h = ((h ^ data[tail]) * m) & mask
    h = ((h ^ (h >> 13)) * m) & mask
    return h ^ (h >> 15)
