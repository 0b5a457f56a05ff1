"""The test broker speaks Kafka: produce and consume through it with aiokafka."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def test_produce_and_consume(kafka_bootstrap: str) -> None:
    topic = f"smoke_{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"message {i}".encode(), key=str(i).encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=f"g_{topic}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen: list[bytes] = []
        while len(seen) < 10:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "no messages arrived"
            for records in batch.values():
                seen.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted(f"message {i}".encode() for i in range(10))
