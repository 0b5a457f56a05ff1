"""The Kafka input consumer against a real broker, with an ingestor that writes each event's
uuid to an output topic through the real producer (as the ClickHouse writers do)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from plugin_server.config import Settings, load_settings
from plugin_server.ingestion.kafka_dead_letter import KafkaDeadLetterQueue
from plugin_server.ingestion.kafka_messages import TOPIC_DEAD_LETTER_QUEUE
from plugin_server.ingestion.types import IncomingEvent, Outcome
from plugin_server.queues.kafka import KafkaIngestionConsumer, parse_event
from plugin_server.queues.kafka_producer import BatchingProducer, KafkaMessage, ProducerRecord
from tests.kafka_broker import tansu_broker
from tests.kafka_topics import TopicTail, ensure_topics, produce


def kafka_value(event_uuid: str, **data: Any) -> bytes:
    payload = {"event": "$pageview", "properties": {"n": 1}, **data}
    envelope = {
        "uuid": event_uuid,
        "distinct_id": "user-1",
        "ip": "127.0.0.1",
        "site_url": "https://app.posthog.com",
        "data": json.dumps(payload),
        "team_id": 2,
        "now": "2021-10-28T12:00:01.123456+00:00",
        "sent_at": "",
    }
    return json.dumps(envelope).encode()


class CopyingIngestor:
    """Ingests an event by producing its uuid to `topic`; can be told to fail or hang."""

    def __init__(self, producer: BatchingProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.poison: set[str] = set()
        self.hang: set[str] = set()
        self.infrastructure_failures = 0
        self.calls = 0

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]:
        self.calls += 1
        if self.infrastructure_failures > 0:
            self.infrastructure_failures -= 1
            raise ConnectionRefusedError("Postgres is down")
        for incoming in batch:
            event_uuid = incoming.event["uuid"]
            if event_uuid in self.hang:
                await asyncio.Event().wait()
            if event_uuid in self.poison:
                raise ValueError(f"cannot ingest {event_uuid}")
        for incoming in batch:
            value = incoming.event["uuid"].encode()
            await self.producer.queue(ProducerRecord(self.topic, [KafkaMessage(value)]))
        return [Outcome.INGESTED] * len(batch)


async def start_group_at_beginning(bootstrap: str, group: str, topic: str, partitions: int) -> None:
    """A new group starts at the end of the topic (as in the original); tests produce first,
    so they commit offset 0 for the group beforehand."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            total += await consumer.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await consumer.stop()


class Rig:
    def __init__(self, bootstrap: str, partitions: int = 3) -> None:
        name = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.input = f"input_{name}"
        self.output = f"output_{name}"
        self.group = f"group_{name}"
        self.partitions = partitions
        self.settings: Settings = load_settings(
            {"NODE_ENV": "test"},
            database_url="postgres://unused/unused",
            kafka_enabled=True,
            kafka_hosts=bootstrap,
            kafka_consumption_topic=self.input,
            kafka_batch_timeout_seconds=1.0,
            ingestion_batch_size=100,
        )
        self.members: list[tuple[KafkaIngestionConsumer, BatchingProducer, asyncio.Task[None]]] = []

    async def prepare(self) -> None:
        await ensure_topics(self.bootstrap, [self.input], self.partitions)
        await ensure_topics(self.bootstrap, [self.output, TOPIC_DEAD_LETTER_QUEUE])
        await start_group_at_beginning(self.bootstrap, self.group, self.input, self.partitions)

    async def add_member(
        self, output_bootstrap: str | None = None, *, staged: bool = False
    ) -> tuple[KafkaIngestionConsumer, CopyingIngestor]:
        producer = BatchingProducer(
            AIOKafkaProducer(
                bootstrap_servers=output_bootstrap or self.bootstrap,
                request_timeout_ms=2000,
                retry_backoff_ms=100,
            ),
            max_queue_size=1000,
            max_batch_bytes=900_000,
            flush_frequency_ms=500,
        )
        await producer.start()
        ingestor = (StagedCopyingIngestor if staged else CopyingIngestor)(producer, self.output)
        consumer = KafkaIngestionConsumer(
            self.settings,
            ingestor,
            producer,
            KafkaDeadLetterQueue(producer),
            group_id=self.group,
            session_timeout_ms=6000,  # the test broker waits half of it for members to join
            sleep=lambda seconds: asyncio.sleep(min(seconds, 0.05)),  # back-off, shortened
        )
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        self.members.append((consumer, producer, task))
        return consumer, ingestor

    async def stop_member(self, consumer: KafkaIngestionConsumer) -> None:
        for member in list(self.members):
            if member[0] is consumer:
                self.members.remove(member)
                await consumer.stop()
                await member[2]
                await member[1].stop()

    async def close(self) -> None:
        for consumer, *_ in list(self.members):
            await self.stop_member(consumer)


@pytest.fixture
async def rig(kafka_bootstrap: str) -> AsyncIterator[Rig]:
    rig = Rig(kafka_bootstrap)
    await rig.prepare()
    yield rig
    await rig.close()


async def wait_joined(consumer: KafkaIngestionConsumer, within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not consumer.ready()[0]:  # noqa: ASYNC110 - polling the readiness probe
            await asyncio.sleep(0.05)


def test_1_2_3_event_assembly() -> None:
    value = json.dumps(
        {
            "uuid": "u-envelope",
            "distinct_id": 2.0,
            "ip": "",
            "site_url": "",
            "data": json.dumps({"event": "e", "team_id": 5, "properties": {"a": 1}, "ip": "1.2.3.4"}),
            "team_id": 2,
            "now": "n",
            "sent_at": "",
        }
    ).encode()
    event = parse_event(value)
    assert event == {
        "uuid": "u-envelope",
        "distinct_id": "2",  # JS String(2.0)
        "ip": "1.2.3.4",  # data wins over the envelope
        "site_url": None,  # falsy becomes null
        "team_id": 5,
        "now": "n",
        "sent_at": "",
        "event": "e",
        "properties": {"a": 1},
    }
    no_id = json.loads(value)
    no_id["distinct_id"] = None
    assert "distinct_id" not in parse_event(json.dumps(no_id).encode())
    floats = json.loads(value)
    floats["data"] = json.dumps({"event": "e", "properties": {"one": 1.0, "half": 0.5}})
    assert parse_event(json.dumps(floats).encode())["properties"] == {"one": 1, "half": 0.5}


async def test_every_event_comes_out_and_offsets_are_committed(rig: Rig) -> None:
    uuids = [str(uuid.uuid4()) for _ in range(300)]
    async with TopicTail(rig.bootstrap, [rig.output]) as tail:
        await produce(rig.bootstrap, rig.input, [kafka_value(u) for u in uuids])
        consumer, _ = await rig.add_member()
        await wait_joined(consumer)
        out = await tail.read(rig.output, len(uuids), within=30)
        await asyncio.sleep(0.3)
    assert sorted(m.value.decode() for m in out) == sorted(uuids)
    assert consumer.ready() == (True, "")
    async with asyncio.timeout(10):
        while await committed(rig.bootstrap, rig.group, rig.input, rig.partitions) < len(uuids):  # noqa: ASYNC110
            await asyncio.sleep(0.2)


async def test_5_2_02_unreadable_messages_are_dead_lettered_and_the_partition_moves_on(rig: Rig) -> None:
    """Recommendation of spec §1.2.4 / §5.2 #2: no poison pill."""
    rig.partitions = 1
    good = [str(uuid.uuid4()) for _ in range(3)]
    bad_data = json.dumps({"uuid": "u-bad", "team_id": 2, "data": "{not json"}).encode()
    values = [kafka_value(good[0]), b"\xff not json", bad_data, kafka_value(good[1]), kafka_value(good[2])]
    async with TopicTail(rig.bootstrap, [rig.output, TOPIC_DEAD_LETTER_QUEUE]) as tail:
        await produce(rig.bootstrap, rig.input, values, key=b"same-partition")
        await rig.add_member()
        out = await tail.read(rig.output, 3, within=30)
        dead = [json.loads(m.value) for m in await tail.read(TOPIC_DEAD_LETTER_QUEUE, 2)]
    assert [m.value.decode() for m in out] == good
    assert [d["error_location"] for d in dead] == ["plugin_server_parse_message"] * 2
    assert dead[0]["raw_payload"] == b"\xff not json".decode("utf-8", "replace")
    assert dead[0]["error"].startswith("ingestEvent failed. Error: Kafka message is not JSON")
    assert dead[1]["raw_payload"] == bad_data.decode()
    assert dead[1]["event_uuid"] == "u-bad" and dead[1]["uuid"] == "u-bad" and dead[1]["team_id"] == 2


async def test_an_event_that_keeps_failing_is_dead_lettered_and_the_rest_ingested(rig: Rig) -> None:
    uuids = [str(uuid.uuid4()) for _ in range(20)]
    async with TopicTail(rig.bootstrap, [rig.output, TOPIC_DEAD_LETTER_QUEUE]) as tail:
        await produce(rig.bootstrap, rig.input, [kafka_value(u) for u in uuids])
        _consumer, ingestor = await rig.add_member()
        ingestor.poison.add(uuids[7])
        out = await tail.read(rig.output, 19, within=30)
        [dead] = await tail.read(TOPIC_DEAD_LETTER_QUEUE, 1)
        settled = await tail.settle(0.5)
    assert sorted(m.value.decode() for m in out) == sorted(set(uuids) - {uuids[7]})
    assert len(settled[rig.output]) == 19
    payload = json.loads(dead.value)
    assert payload["event_uuid"] == uuids[7]
    assert payload["error"] == f"ingestEvent failed. Error: cannot ingest {uuids[7]}"
    assert payload["error_location"] == "plugin_server_ingest_event"


async def test_a_hanging_event_is_dead_lettered_after_the_batch_time_out(rig: Rig) -> None:
    uuids = [str(uuid.uuid4()) for _ in range(5)]
    async with TopicTail(rig.bootstrap, [rig.output, TOPIC_DEAD_LETTER_QUEUE]) as tail:
        _consumer, ingestor = await rig.add_member()
        ingestor.hang.add(uuids[2])
        await produce(rig.bootstrap, rig.input, [kafka_value(u) for u in uuids])
        out = await tail.read(rig.output, 4, within=30)
        [dead] = await tail.read(TOPIC_DEAD_LETTER_QUEUE, 1, within=30)
    assert sorted(m.value.decode() for m in out) == sorted(set(uuids) - {uuids[2]})
    payload = json.loads(dead.value)
    assert payload["event_uuid"] == uuids[2]
    assert "longer than 1 s" in payload["error"]


async def test_infrastructure_failures_are_waited_out_without_losing_or_dead_lettering(rig: Rig) -> None:
    uuids = [str(uuid.uuid4()) for _ in range(50)]
    async with TopicTail(rig.bootstrap, [rig.output, TOPIC_DEAD_LETTER_QUEUE]) as tail:
        _consumer, ingestor = await rig.add_member()
        ingestor.infrastructure_failures = 3
        await produce(rig.bootstrap, rig.input, [kafka_value(u) for u in uuids])
        out = await tail.read(rig.output, 50, within=30)
        settled = await tail.settle(0.5)
    assert ingestor.infrastructure_failures == 0
    assert Counter(m.value.decode() for m in out) == Counter(uuids)
    assert len(settled[rig.output]) == 50
    assert settled[TOPIC_DEAD_LETTER_QUEUE] == []


async def test_rebalances_lose_nothing_and_duplicate_nothing(kafka_bootstrap: str) -> None:
    """A second member joins mid-stream, then the first leaves: every event comes out once."""
    rig = Rig(kafka_bootstrap, partitions=6)
    await rig.prepare()
    try:
        uuids = [str(uuid.uuid4()) for _ in range(3000)]
        async with TopicTail(rig.bootstrap, [rig.output]) as tail:
            first, _ = await rig.add_member()
            await wait_joined(first)
            await produce(rig.bootstrap, rig.input, [kafka_value(u) for u in uuids[:1000]])
            await tail.read(rig.output, 300, within=30)
            second, _ = await rig.add_member()
            await produce(rig.bootstrap, rig.input, [kafka_value(u) for u in uuids[1000:2000]])
            await wait_joined(second)
            await tail.read(rig.output, 1500, within=30)
            await rig.stop_member(first)
            await produce(rig.bootstrap, rig.input, [kafka_value(u) for u in uuids[2000:]])
            await tail.read(rig.output, 3000, within=60)
            settled = await tail.settle(1.0)
        seen = Counter(m.value.decode() for m in settled[rig.output])
        assert set(seen) == set(uuids)
        assert [u for u, n in seen.items() if n > 1] == []
    finally:
        await rig.close()


async def test_offsets_are_not_committed_while_the_output_is_not_acknowledged(rig: Rig) -> None:
    """At least once: input offsets move only after the broker acknowledged the batch's output."""
    with tansu_broker() as output_bootstrap:
        await ensure_topics(output_bootstrap, [rig.output])
        async with TopicTail(output_bootstrap, [rig.output]) as tail:
            consumer, _ = await rig.add_member(output_bootstrap)
            await produce(rig.bootstrap, rig.input, [kafka_value(str(uuid.uuid4())) for _ in range(50)])
            await tail.read(rig.output, 50, within=30)
            async with asyncio.timeout(10):
                while consumer.messages_committed < 50:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
    # The output broker is gone: the next events are ingested, but never acknowledged.
    await produce(rig.bootstrap, rig.input, [kafka_value(str(uuid.uuid4())) for _ in range(50)])
    async with asyncio.timeout(20):
        while consumer.events_seen < 100:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(4)  # several delivery time-outs and re-reads
    assert consumer.messages_committed == 50
    assert await committed(rig.bootstrap, rig.group, rig.input, rig.partitions) == 50
    assert consumer.events_seen > 100  # the unacknowledged batch was read again


class StagedCopyingIngestor(CopyingIngestor):
    """A two-stage `CopyingIngestor`: `prepare` checks the events (the plugin step), `commit`
    produces them after a pause; notes when each stage of each batch ran."""

    def __init__(self, producer: BatchingProducer, topic: str) -> None:
        super().__init__(producer, topic)
        self.committing: list[str] | None = None  # first uuid of the batch being committed
        self.prepared_during_commit = 0
        self.commit_order: list[str] = []

    async def prepare(self, batch: Sequence[IncomingEvent]) -> list[IncomingEvent]:
        await asyncio.sleep(0.01)  # as plugins do: the batch before goes on meanwhile
        if self.committing is not None:
            self.prepared_during_commit += 1
        for incoming in batch:
            if incoming.event["uuid"] in self.poison:
                raise ValueError(f"cannot ingest {incoming.event['uuid']}")
        return list(batch)

    async def commit(self, prepared: list[IncomingEvent]) -> list[Outcome]:
        assert self.committing is None, "batches are committed one at a time"
        self.committing = [e.event["uuid"] for e in prepared]
        try:
            await asyncio.sleep(0.05)
            self.commit_order.extend(self.committing)
            return await CopyingIngestor.ingest(self, prepared)
        finally:
            self.committing = None

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]:
        return await self.commit(await self.prepare(batch))


async def test_the_next_batch_is_prepared_while_one_commits_and_commits_stay_in_order(rig: Rig) -> None:
    rig.settings = load_settings(
        {"NODE_ENV": "test"},
        database_url="postgres://unused/unused",
        kafka_enabled=True,
        kafka_hosts=rig.bootstrap,
        kafka_consumption_topic=rig.input,
        kafka_batch_timeout_seconds=1.0,
        ingestion_batch_size=10,
    )
    uuids = [str(uuid.uuid4()) for _ in range(60)]
    _consumer, ingestor = await rig.add_member(staged=True)
    assert isinstance(ingestor, StagedCopyingIngestor)
    ingestor.poison.add(uuids[33])
    async with TopicTail(rig.bootstrap, [rig.output, TOPIC_DEAD_LETTER_QUEUE]) as tail:
        await produce(rig.bootstrap, rig.input, [kafka_value(u) for u in uuids], key=b"same-partition")
        out = await tail.read(rig.output, 59, within=30)
        [dead] = await tail.read(TOPIC_DEAD_LETTER_QUEUE, 1, within=30)
    expected = [u for u in uuids if u != uuids[33]]
    assert [m.value.decode() for m in out] == expected  # one partition: in order, each once
    assert ingestor.commit_order == expected
    assert ingestor.prepared_during_commit > 0
    assert json.loads(dead.value)["event_uuid"] == uuids[33]
    async with asyncio.timeout(10):
        while await committed(rig.bootstrap, rig.group, rig.input, rig.partitions) < len(uuids):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
