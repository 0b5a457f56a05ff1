"""Reading what a test produced: the broker is shared by the session, so a `TopicTail` marks
where each partition ends when it is opened (a marker message of its own) and reads only the
messages after its marker. Reading "until nothing more comes" would depend on timing: on a busy
machine a fetch can come back empty before an earlier test's backlog is read."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for topic in topics:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


MARKER = "test-tail-start"


class TopicTail:
    def __init__(self, bootstrap: str, topics: Iterable[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self._consumer: AIOKafkaConsumer | None = None
        self._read: dict[str, list[Any]] = {topic: [] for topic in self.topics}

    async def __aenter__(self) -> TopicTail:
        await ensure_topics(self.bootstrap, self.topics)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        partitions: list[TopicPartition] = []
        for topic in self.topics:
            for _ in range(50):
                found = self._consumer.partitions_for_topic(topic)
                if found:
                    break
                await self._consumer._client.force_metadata_update()
                await asyncio.sleep(0.05)
            partitions.extend(TopicPartition(topic, p) for p in sorted(found or ()))
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        marker = uuid.uuid4().hex.encode()
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            for tp in partitions:
                await producer.send_and_wait(
                    tp.topic, b"", partition=tp.partition, headers=[(MARKER, marker)]
                )
        finally:
            await producer.stop()
        # Everything up to and including our marker is earlier tests' output.
        unmarked = set(partitions)
        deadline = time.monotonic() + 60
        while unmarked:
            if time.monotonic() > deadline:
                raise AssertionError(f"the tail's markers did not come back: {sorted(map(str, unmarked))}")
            fetched = await self._consumer.getmany(*unmarked, timeout_ms=500)
            for tp, messages in fetched.items():
                for index, message in enumerate(messages):
                    if (MARKER, marker) in (message.headers or ()):
                        unmarked.discard(tp)
                        self._keep(tp.topic, messages[index + 1 :])
                        break
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _poll(self, timeout_ms: int) -> None:
        assert self._consumer is not None
        fetched = await self._consumer.getmany(timeout_ms=timeout_ms)
        for tp, messages in fetched.items():
            self._keep(tp.topic, messages)

    def _keep(self, topic: str, messages: list[Any]) -> None:
        self._read[topic].extend(m for m in messages if not any(k == MARKER for k, _ in m.headers or ()))

    async def read(self, topic: str, count: int, within: float = 10.0) -> list[Any]:
        """At least `count` new messages of `topic` (all read so far), failing after `within` seconds."""
        deadline = time.monotonic() + within
        while len(self._read[topic]) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: {len(self._read[topic])} of {count} messages arrived")
            await self._poll(200)
        return list(self._read[topic])

    async def settle(self, seconds: float = 0.5) -> dict[str, list[Any]]:
        """Everything that arrived, after waiting `seconds` for stragglers."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self._poll(100)
        return {topic: list(messages) for topic, messages in self._read.items()}


async def produce(bootstrap: str, topic: str, values: Iterable[bytes], key: bytes | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
