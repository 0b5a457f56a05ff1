"""Property-based: malformed Kafka messages of every shape, mixed with valid ones, through the
Kafka-mode parsing and pipeline (real Postgres, the real broker). Whatever they hold, nothing
raises (a raise would re-read the batch forever): every message ends as exactly one outcome,
produced or dead-lettered, and the valid ones are produced."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_server.db.postgres import create_pool
from plugin_server.ingestion.api import NoPlugins
from plugin_server.ingestion.kafka_dead_letter import KafkaDeadLetterQueue
from plugin_server.ingestion.types import Outcome
from plugin_server.queues.kafka import InvalidMessage, incoming_event
from plugin_server.queues.kafka_producer import BatchingProducer
from plugin_server.queues.kafka_service import kafka_mode_ingestor
from tests.conftest import _TRUNCATE, make_settings
from tests.factories import TEAM_ID, create_team
from tests.faults.test_fuzz_celery import JSON, ODD_NUMBERS, ODD_STRINGS, event_data

ENVELOPE_KEYS = st.sampled_from(
    ["uuid", "distinct_id", "ip", "site_url", "team_id", "now", "sent_at", "data"]
)


def valid(seq: int) -> bytes:
    return json.dumps(
        {
            "uuid": str(uuid.uuid4()),
            "distinct_id": f"user-{seq % 4}",
            "ip": "127.0.0.1",
            "site_url": "https://app.posthog.com",
            "data": json.dumps({"event": "$pageview", "properties": {"seq": seq}}),
            "team_id": TEAM_ID,
            "now": "2021-10-28T12:00:01.123456+00:00",
            "sent_at": "2021-10-28T12:00:00.500000+00:00",
        }
    ).encode()


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=40))
    if kind == 1:
        return json.dumps(draw(JSON)).encode()
    envelope = json.loads(valid(0))
    envelope["uuid"] = str(uuid.uuid4())
    if kind == 2:  # odd envelope values
        for key in draw(st.lists(ENVELOPE_KEYS, min_size=1, max_size=3)):
            envelope[key] = draw(JSON | ODD_NUMBERS | ODD_STRINGS)
    else:  # odd event data
        data = draw(event_data())
        envelope["data"] = json.dumps(data) if draw(st.booleans()) else draw(st.text(max_size=20))
        if isinstance(data, dict) and "uuid" not in data and draw(st.booleans()):
            envelope["team_id"] = draw(st.just(TEAM_ID) | ODD_NUMBERS)
    return json.dumps(envelope).encode()


async def _run(pg_dsn: str, kafka_bootstrap: str, messages: list[bytes], valid_count: int) -> None:
    producer = BatchingProducer(
        AIOKafkaProducer(bootstrap_servers=kafka_bootstrap),
        max_queue_size=1000,
        max_batch_bytes=900_000,
        flush_frequency_ms=500,
    )
    await producer.start()
    pg = await create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        await pg.execute(_TRUNCATE)
        await create_team(pg, TEAM_ID, ingested_event=True)
        dead_letters = KafkaDeadLetterQueue(producer)
        ingestor = kafka_mode_ingestor(pg, make_settings(pg_dsn), NoPlugins(), producer, dead_letters)
        await ingestor.start()
        unparsable = 0
        events = []
        for message in messages:
            try:
                events.append(incoming_event(message))
            except InvalidMessage as exc:
                await dead_letters.add_unparsable(message, exc, exc.envelope)
                unparsable += 1
        outcomes = await ingestor.ingest(events)  # must not raise: nothing here is an outage
        await producer.flush()
        await ingestor.stop()
        assert len(outcomes) + unparsable == len(messages)
        assert set(outcomes) <= {Outcome.INGESTED, Outcome.DEAD_LETTERED}
        seqs = [e.event.get("properties", {}).get("seq") for e in events]
        for outcome, event, seq in zip(outcomes, events, seqs, strict=True):
            if event.raw in messages[:valid_count] and isinstance(seq, int):
                assert outcome is Outcome.INGESTED, event.event
    finally:
        await producer.stop()
        await pg.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(bad=st.lists(malformed(), min_size=1, max_size=10), valid_count=st.integers(1, 6), seed=st.randoms())
def test_malformed_kafka_messages_each_end_once(
    pg_dsn: str, kafka_bootstrap: str, bad: list[bytes], valid_count: int, seed: Any
) -> None:
    good = [valid(i) for i in range(valid_count)]
    rest = list(dict.fromkeys(m for m in bad if m not in good))
    seed.shuffle(rest)
    asyncio.run(_run(pg_dsn, kafka_bootstrap, good + rest, valid_count))
