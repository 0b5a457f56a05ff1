"""The batching Kafka producer against a real broker (spec/services.md §8.1, scenarios §9.7)."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2 as client_murmur2

from plugin_server.queues.kafka_producer import (
    BatchingProducer,
    KafkaDeliveryError,
    KafkaMessage,
    MessageTooLarge,
    ProducerRecord,
    murmur2,
)
from tests.kafka_broker import tansu_broker
from tests.kafka_topics import TopicTail


class FrozenClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


T0 = 11 * 3600 + 5.0  # 11:00:05 as seconds of the day


def record(topic: str, size: int) -> ProducerRecord:
    return ProducerRecord(topic, [KafkaMessage(b"x" * size)])


@pytest.fixture
def topic() -> str:
    return f"producer_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
async def producer(kafka_bootstrap: str, clock: FrozenClock) -> AsyncIterator[BatchingProducer]:
    # §9.7 settings: flush every 20000 ms, at most 4 records, at most 500 bytes; no timer.
    wrapper = BatchingProducer(
        AIOKafkaProducer(bootstrap_servers=kafka_bootstrap),
        max_queue_size=4,
        max_batch_bytes=500,
        flush_frequency_ms=20_000,
        clock=clock,
        periodic_flush=False,
    )
    await wrapper.start()
    yield wrapper
    await wrapper.stop()


async def test_9_7_26_count_limit(producer: BatchingProducer, kafka_bootstrap: str, topic: str) -> None:
    async with TopicTail(kafka_bootstrap, [topic]) as tail:
        for size in (10, 30, 30):
            await producer.queue(record(topic, size))
        assert (producer.sends, len(producer.batch), producer.batch_bytes) == (0, 3, 70)
        assert (await tail.settle(0.3))[topic] == []

        await producer.queue(record(topic, 30))
        assert (producer.sends, producer.batch, producer.batch_bytes) == (1, [], 0)
        await producer.flush()
        messages = await tail.read(topic, 4)
    assert [len(m.value) for m in messages] == [10, 30, 30, 30]


async def test_9_7_27_byte_limit(producer: BatchingProducer, kafka_bootstrap: str, topic: str) -> None:
    async with TopicTail(kafka_bootstrap, [topic]) as tail:
        await producer.queue(record(topic, 450))
        await producer.queue(record(topic, 40))
        assert (producer.sends, len(producer.batch)) == (0, 2)

        await producer.queue(record(topic, 40))  # 530 > 500: the first two go out
        assert producer.sends == 1
        assert [r.size for r in producer.batch] == [40]
        assert producer.batch_bytes == 40
        messages = await tail.read(topic, 2)
        assert [len(m.value) for m in messages] == [450, 40]
        assert len((await tail.settle(0.3))[topic]) == 2


async def test_9_7_28_age_limit(
    producer: BatchingProducer, clock: FrozenClock, kafka_bootstrap: str, topic: str
) -> None:
    async with TopicTail(kafka_bootstrap, [topic]) as tail:
        await producer.queue(record(topic, 10))
        clock.now = T0 + 15  # 11:00:20: 15 s <= 20 s
        await producer.queue(record(topic, 10))
        assert (producer.sends, len(producer.batch)) == (0, 2)

        clock.now = T0 + 21  # 11:00:26
        await producer.queue(record(topic, 10))
        assert (producer.sends, producer.batch, producer.last_flush) == (1, [], T0 + 21)
        assert len(await tail.read(topic, 3)) == 3


async def test_9_7_29_manual_flush(
    producer: BatchingProducer, clock: FrozenClock, kafka_bootstrap: str, topic: str
) -> None:
    async with TopicTail(kafka_bootstrap, [topic]) as tail:
        await producer.queue(ProducerRecord(topic, [KafkaMessage(b"0123456789", b"k")]))
        clock.now = T0 + 10  # 11:00:15
        await producer.flush()
        assert (producer.sends, producer.batch, producer.batch_bytes) == (1, [], 0)
        assert producer.last_flush == T0 + 10
        [message] = await tail.read(topic, 1)
    assert (message.key, message.value) == (b"k", b"0123456789")


async def test_9_7_30_empty_flush_sends_nothing(producer: BatchingProducer, clock: FrozenClock) -> None:
    clock.now = T0 + 100
    await producer.flush()
    assert producer.sends == 0
    assert producer.last_flush == T0


async def test_10_6_oversize_first_record_is_sent_alone(
    producer: BatchingProducer, kafka_bootstrap: str, topic: str
) -> None:
    """Fix of the original quirk (services §10.6): a record bigger than the batch limit
    arriving at an empty batch was silently dropped; it is sent on its own."""
    async with TopicTail(kafka_bootstrap, [topic]) as tail:
        await producer.queue(record(topic, 600))
        assert (producer.sends, producer.batch) == (1, [])
        await producer.queue(record(topic, 10))
        await producer.queue(record(topic, 700))  # the small one goes first, then this alone
        assert (producer.sends, producer.batch) == (3, [])
        messages = await tail.read(topic, 3)
    assert [len(m.value) for m in messages] == [600, 10, 700]


async def test_a_message_too_large_for_the_broker_is_refused_before_queueing(
    kafka_bootstrap: str, topic: str
) -> None:
    wrapper = BatchingProducer(
        AIOKafkaProducer(bootstrap_servers=kafka_bootstrap),
        max_queue_size=10,
        max_batch_bytes=100_000,
        flush_frequency_ms=1000,
        max_message_bytes=1000,
        periodic_flush=False,
    )
    await wrapper.start()
    try:
        with pytest.raises(MessageTooLarge, match="1001 bytes"):
            await wrapper.queue(record(topic, 1001))
        assert wrapper.batch == []
    finally:
        await wrapper.stop()


async def test_stop_flushes_what_is_batched(kafka_bootstrap: str, topic: str) -> None:
    wrapper = BatchingProducer(
        AIOKafkaProducer(bootstrap_servers=kafka_bootstrap),
        max_queue_size=100,
        max_batch_bytes=100_000,
        flush_frequency_ms=60_000,
    )
    async with TopicTail(kafka_bootstrap, [topic]) as tail:
        await wrapper.start()
        await wrapper.queue(record(topic, 5))
        assert wrapper.sends == 0
        await wrapper.stop()
        assert len(await tail.read(topic, 1)) == 1


async def test_the_timer_flushes_a_batch_nobody_flushes(kafka_bootstrap: str, topic: str) -> None:
    wrapper = BatchingProducer(
        AIOKafkaProducer(bootstrap_servers=kafka_bootstrap),
        max_queue_size=100,
        max_batch_bytes=100_000,
        flush_frequency_ms=100,
    )
    async with TopicTail(kafka_bootstrap, [topic]) as tail:
        await wrapper.start()
        try:
            await wrapper.queue(record(topic, 5))
            assert len(await tail.read(topic, 1, within=5)) == 1
            assert wrapper.sends == 1
        finally:
            await wrapper.stop()


async def test_flush_raises_when_the_broker_does_not_acknowledge() -> None:
    """A refused send is not swallowed: flush() raises, so the consumer does not commit."""
    with tansu_broker() as bootstrap:
        wrapper = BatchingProducer(
            AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=1500, retry_backoff_ms=100),
            max_queue_size=100,
            max_batch_bytes=100_000,
            flush_frequency_ms=60_000,
            periodic_flush=False,
        )
        await wrapper.start()
        await wrapper.queue(record("doomed", 5))
        await wrapper.flush()  # the broker is up: delivered
    # The broker is gone now.
    try:
        await wrapper.queue(record("doomed", 5))
        with pytest.raises(KafkaDeliveryError):
            await wrapper.flush()
        await wrapper.flush()  # a failure is reported once
    finally:
        await wrapper.stop()


def test_keys_are_partitioned_as_the_kafka_clients_do() -> None:
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF  # the Java client's own test value
    keys = [str(uuid.uuid4()).encode() for _ in range(200)]
    draw = random.Random(7)
    keys += [draw.randbytes(n) for n in range(80) for _ in range(5)]
    assert [murmur2(k) for k in keys] == [client_murmur2(k) for k in keys]
