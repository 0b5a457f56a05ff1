"""Kafka mode of the pipeline (spec/ingestion.md §0.2, §3.3; scenarios of §4 that run in Kafka
mode): Postgres still holds persons, distinct ids and definitions; events, recordings, groups and
the persons' ClickHouse copies come out on the real broker's topics, after the COMMIT."""

from __future__ import annotations

import json
import uuid as uuid_module
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from plugin_server.config import Settings
from plugin_server.ingestion import kafka_messages as km
from plugin_server.ingestion import outbox
from plugin_server.ingestion.api import NoPlugins
from plugin_server.ingestion.identify import merge_people
from plugin_server.ingestion.kafka_dead_letter import KafkaDeadLetterQueue
from plugin_server.ingestion.persons import (
    add_distinct_id,
    create_person,
    fetch_person,
)
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.ingestion.types import Outcome
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.plugins.logs import LogTarget, PluginLogSink
from plugin_server.queues.kafka_producer import BatchingProducer, ProducerRecord
from plugin_server.queues.kafka_service import kafka_mode_ingestor
from tests.factories import TEAM_ID
from tests.ingestion.conftest import (
    distinct_ids_of,
    events,
    ingest,
    ingest_one,
    make_event,
    make_person,
    persons,
)
from tests.kafka_topics import TopicTail

TOPICS = [
    km.TOPIC_EVENTS,
    km.TOPIC_SESSION_RECORDING_EVENTS,
    km.TOPIC_PERSON,
    km.TOPIC_PERSON_UNIQUE_ID,
    km.TOPIC_GROUPS,
    km.TOPIC_DEAD_LETTER_QUEUE,
]


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[BatchingProducer]:
    wrapper = BatchingProducer(
        AIOKafkaProducer(bootstrap_servers=kafka_bootstrap),
        max_queue_size=1000,
        max_batch_bytes=900_000,
        flush_frequency_ms=500,
    )
    await wrapper.start()
    yield wrapper
    await wrapper.stop()


@pytest.fixture
async def kafka_ingestor(
    pg: asyncpg.Pool, settings: Settings, team: int, producer: BatchingProducer
) -> AsyncIterator[PostgresIngestor]:
    ingestor = kafka_mode_ingestor(pg, settings, NoPlugins(), producer, KafkaDeadLetterQueue(producer))
    await ingestor.start()
    yield ingestor
    await ingestor.stop()


@pytest.fixture
async def tail(kafka_bootstrap: str) -> AsyncIterator[TopicTail]:
    async with TopicTail(kafka_bootstrap, TOPICS) as topic_tail:
        yield topic_tail


async def produced(tail: TopicTail, producer: BatchingProducer, seconds: float = 0.3) -> dict[str, list[Any]]:
    """Every message of the test's topics that the broker acknowledged, after a flush."""
    await producer.flush()
    return await tail.settle(seconds)


def values(messages: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(m.value) for m in messages]


def event_messages(messages: list[Any]) -> list[dict[str, Any]]:
    return [km.decode_event_proto(m.value) for m in messages]


async def test_4_1_02_first_autocapture_in_kafka_mode(
    pg: asyncpg.Pool,
    kafka_ingestor: PostgresIngestor,
    producer: BatchingProducer,
    tail: TopicTail,
) -> None:
    event = make_event(
        "$autocapture",
        "2",
        {
            "distinct_id": 2,
            "token": "THIS IS NOT A TOKEN FOR TEAM 2",
            "$browser": "Chrome",
            "$current_url": "https://test.com",
            "$os": "Mac OS X",
            "utm_medium": "twitter",
            "$elements": [
                {"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"},
                {"tag_name": "div", "nth_child": 1, "nth_of_type": 2, "$el_text": "💻"},
            ],
        },
    )
    assert await ingest_one(kafka_ingestor, event) is Outcome.INGESTED
    out = await produced(tail, producer)

    # Postgres: the person and definitions, but no event, element or action rows.
    assert await events(pg) == []
    assert await pg.fetchval("SELECT count(*) FROM posthog_elementgroup") == 0
    [person] = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["2"]
    names = {r["name"] for r in await pg.fetch("SELECT name FROM posthog_eventdefinition")}
    assert names == {"$autocapture"}

    [message] = out[km.TOPIC_EVENTS]
    assert message.key == event["uuid"].encode()
    stored = km.decode_event_proto(message.value)
    assert stored["uuid"] == event["uuid"]
    assert stored["event"] == "$autocapture"
    assert stored["team_id"] == TEAM_ID
    assert stored["distinct_id"] == "2"
    properties = json.loads(stored["properties"])
    assert "$elements" not in properties
    assert properties["$ip"] == "127.0.0.1"
    assert properties["$set"] == {"utm_medium": "twitter"}
    assert properties["$set_once"]["$initial_browser"] == "Chrome"
    # CH format for the event time, ISO (with a literal Z) for created_at.
    datetime.strptime(stored["timestamp"], "%Y-%m-%d %H:%M:%S.%f")
    assert stored["created_at"].endswith("Z") and "T" in stored["created_at"]
    assert stored["elements_chain"] == (
        'a.btn.btn-sm:attr__class="btn btn-sm"nth-child="1"nth-of-type="2";'
        'div:nth-child="1"nth-of-type="2"text="💻"'
    )

    # The person's copies: created (no properties), then its $set/$set_once applied.
    created, updated = values(out[km.TOPIC_PERSON])
    assert created["id"] == updated["id"] == str(person["uuid"])
    assert (created["properties"], created["is_deleted"], created["is_identified"]) == ("{}", 0, False)
    assert json.loads(updated["properties"]) == person["properties"]
    assert updated["created_at"] == km.clickhouse_seconds(person["created_at"])
    [distinct] = values(out[km.TOPIC_PERSON_UNIQUE_ID])
    row = await pg.fetchrow("SELECT * FROM posthog_persondistinctid WHERE distinct_id = '2'")
    assert distinct == {
        "id": row["id"],
        "team_id": TEAM_ID,
        "person_id": str(person["uuid"]),
        "distinct_id": "2",
        "is_deleted": 0,
    }
    assert out[km.TOPIC_DEAD_LETTER_QUEUE] == []


async def test_4_1_01_merge_produces_three_records(pg: asyncpg.Pool, team: int) -> None:
    await make_person(pg, ["person_0"], {"$os": "Microsoft"}, created_at=datetime(2020, 1, 1, tzinfo=UTC))
    await make_person(
        pg, ["person_1"], {"$os": "Chrome", "$browser": "Chrome"}, created_at=datetime(2019, 7, 1, tzinfo=UTC)
    )
    async with pg.acquire() as conn:
        p0 = await fetch_person(conn, TEAM_ID, "person_0")
        p1 = await fetch_person(conn, TEAM_ID, "person_1")
        assert p0 is not None and p1 is not None
        with outbox.collect() as records:
            async with conn.transaction():
                await merge_people(conn, p0, "person_0", p1, "person_1", identify=False)
    assert len(records) == 3
    update, move, delete = records
    assert [r.topic for r in records] == [km.TOPIC_PERSON, km.TOPIC_PERSON_UNIQUE_ID, km.TOPIC_PERSON]
    survivor = json.loads(update.messages[0].value)
    assert survivor["id"] == p0.uuid
    assert json.loads(survivor["properties"]) == {"$os": "Microsoft", "$browser": "Chrome"}
    assert survivor["created_at"] == "2019-07-01 00:00:00"
    assert [json.loads(m.value) for m in move.messages] == [
        {"team_id": TEAM_ID, "person_id": p0.uuid, "distinct_id": "person_1", "is_deleted": 0},
        {"team_id": TEAM_ID, "person_id": p1.uuid, "distinct_id": "person_1", "is_deleted": 1},
    ]
    deleted = json.loads(delete.messages[0].value)
    assert (deleted["id"], deleted["is_deleted"]) == (p1.uuid, 1)
    assert json.loads(deleted["properties"]) == {"$os": "Chrome", "$browser": "Chrome"}


async def test_4_1_01_a_failed_merge_produces_nothing(pg: asyncpg.Pool, team: int) -> None:
    await make_person(pg, ["person_0"])
    await make_person(pg, ["person_1"])
    async with pg.acquire() as conn:
        p0 = await fetch_person(conn, TEAM_ID, "person_0")
        p1 = await fetch_person(conn, TEAM_ID, "person_1")
        assert p0 is not None and p1 is not None
        await conn.execute("DELETE FROM posthog_persondistinctid WHERE person_id = $1", p1.id)
        with outbox.collect() as records:
            with pytest.raises(RuntimeError, match="source person no longer exists"):
                async with conn.transaction():
                    await merge_people(conn, p0, "person_0", p1, "person_1", identify=False)
    assert records == []


async def test_4_2_56_to_58_person_writes_and_their_copies(pg: asyncpg.Pool, team: int) -> None:
    person_uuid = uuidt()
    async with pg.acquire() as conn:
        with outbox.collect() as records:
            async with conn.transaction():
                person = await create_person(
                    conn,
                    created_at=datetime(2021, 10, 28, 12, 0, 5, 600000, tzinfo=UTC),
                    properties={"userProp": "propValue"},
                    team_id=TEAM_ID,
                    is_identified=True,
                    uuid=person_uuid,
                    distinct_ids=["distinct1", "distinct2"],
                )
                await add_distinct_id(conn, person, "anotherOne")
    topics = [r.topic for r in records]
    assert topics == [km.TOPIC_PERSON] + [km.TOPIC_PERSON_UNIQUE_ID] * 3
    created = json.loads(records[0].messages[0].value)
    assert created == {
        "id": person_uuid,
        "created_at": "2021-10-28 12:00:05",
        "properties": '{"userProp":"propValue"}',
        "team_id": TEAM_ID,
        "is_identified": True,
        "is_deleted": 0,
    }
    rows = await pg.fetch("SELECT * FROM posthog_persondistinctid ORDER BY id")
    assert [json.loads(r.messages[0].value) for r in records[1:4]] == [
        {
            "id": row["id"],
            "team_id": TEAM_ID,
            "person_id": person_uuid,
            "distinct_id": row["distinct_id"],
            "is_deleted": 0,
        }
        for row in rows
    ]
    assert [row["distinct_id"] for row in rows] == ["distinct1", "distinct2", "anotherOne"]


async def test_4_1_48_set_sends_the_person_state_even_when_unchanged(
    pg: asyncpg.Pool, kafka_ingestor: PostgresIngestor, producer: BatchingProducer, tail: TopicTail
) -> None:
    """§2.8.4 step 5: in Kafka mode every `$set` event sends the person's state."""
    person_id = await make_person(pg, ["distinct_id1"], {"a_prop": "test-1"})
    same = make_event("some_event", "distinct_id1", {"$set": {"a_prop": "test-1"}})
    changed = make_event("some_event", "distinct_id1", {"$set": {"b_prop": "test-2"}})
    assert await ingest(kafka_ingestor, same, changed) == [Outcome.INGESTED, Outcome.INGESTED]
    out = await produced(tail, producer)
    states = [json.loads(m["properties"]) for m in values(out[km.TOPIC_PERSON])]
    assert states == [{"a_prop": "test-1"}, {"a_prop": "test-1", "b_prop": "test-2"}]
    properties = await pg.fetchval("SELECT properties FROM posthog_person WHERE id = $1", person_id)
    assert properties == {"a_prop": "test-1", "b_prop": "test-2"}


async def test_a_rolled_back_transaction_produces_nothing(
    pg: asyncpg.Pool,
    kafka_ingestor: PostgresIngestor,
    producer: BatchingProducer,
    tail: TopicTail,
) -> None:
    """A `$set` for a person that cannot be found fails the event: no copy of anything it did."""
    await make_person(pg, ["someone"])
    await pg.execute("DELETE FROM posthog_persondistinctid")
    kafka_ingestor.seen.add_all([(TEAM_ID, "someone")])  # the seen-cache hides the deletion
    event = make_event("some_event", "someone", {"$set": {"a": 1}})
    assert await ingest_one(kafka_ingestor, event) is Outcome.DEAD_LETTERED
    out = await produced(tail, producer)
    assert out[km.TOPIC_EVENTS] == [] and out[km.TOPIC_PERSON] == []
    [dead] = values(out[km.TOPIC_DEAD_LETTER_QUEUE])
    assert dead["event_uuid"] == event["uuid"]
    assert dead["error"].startswith(
        'ingestEvent failed. Error: Could not find person with distinct id "someone"'
    )


async def test_4_1_06_unknown_team_is_dead_lettered_to_kafka(
    kafka_ingestor: PostgresIngestor, producer: BatchingProducer, tail: TopicTail
) -> None:
    event = make_event("$pageview", "x", {"key": "value"}, team_id=1337)
    assert await ingest_one(kafka_ingestor, event) is Outcome.DEAD_LETTERED
    out = await produced(tail, producer)
    [dead] = values(out[km.TOPIC_DEAD_LETTER_QUEUE])
    assert dead["error"] == "ingestEvent failed. Error: No team found with ID 1337. Can't ingest event."
    assert dead["error_location"] == "plugin_server_ingest_event"
    assert dead["team_id"] == 1337
    assert dead["properties"] == '{"key":"value"}'
    assert out[km.TOPIC_EVENTS] == []


async def test_4_1_25_26_snapshot_in_kafka_mode(
    pg: asyncpg.Pool, kafka_ingestor: PostgresIngestor, producer: BatchingProducer, tail: TopicTail
) -> None:
    event = make_event(
        "$snapshot",
        "some_new_id",
        {"$session_id": "abcf-efg", "$snapshot_data": {"timestamp": 123}},
        timestamp="2021-10-28T12:00:00.123Z",
        sent_at=None,
    )
    assert await ingest_one(kafka_ingestor, event) is Outcome.INGESTED
    out = await produced(tail, producer)
    assert out[km.TOPIC_EVENTS] == []
    assert await pg.fetchval("SELECT count(*) FROM posthog_sessionrecordingevent") == 0
    assert len(await persons(pg)) == 1
    [recording] = out[km.TOPIC_SESSION_RECORDING_EVENTS]
    assert recording.key == event["uuid"].encode()
    assert json.loads(recording.value) == {
        "uuid": event["uuid"],
        "team_id": TEAM_ID,
        "distinct_id": "some_new_id",
        "session_id": "abcf-efg",
        "snapshot_data": '{"timestamp":123}',
        "timestamp": "2021-10-28 12:00:00.123",
        "created_at": "2021-10-28 12:00:00.123",
    }


async def test_4_1_52_groupidentify_in_kafka_mode(
    pg: asyncpg.Pool, kafka_ingestor: PostgresIngestor, producer: BatchingProducer, tail: TopicTail
) -> None:
    await make_person(pg, ["distinct_id1"])
    event = make_event(
        "$groupidentify",
        "distinct_id1",
        {"$group_type": "organization", "$group_key": "org::5", "$group_set": {"foo": "bar"}},
    )
    before = datetime.now(UTC).replace(microsecond=0)
    assert await ingest_one(kafka_ingestor, event) is Outcome.INGESTED
    out = await produced(tail, producer)
    assert len(out[km.TOPIC_EVENTS]) == 1
    [group] = values(out[km.TOPIC_GROUPS])
    created_at = datetime.strptime(group.pop("created_at"), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert before <= created_at <= datetime.now(UTC)
    assert group == {
        "group_type_index": 0,
        "group_key": "org::5",
        "team_id": TEAM_ID,
        "group_properties": '{"foo":"bar"}',
    }
    mapping = await pg.fetch("SELECT group_type, group_type_index FROM posthog_grouptypemapping")
    assert [(r["group_type"], r["group_type_index"]) for r in mapping] == [("organization", 0)]


async def test_4_1_15_alias_to_existing_in_kafka_mode(
    pg: asyncpg.Pool, kafka_ingestor: PostgresIngestor, producer: BatchingProducer, tail: TopicTail
) -> None:
    person_id = await make_person(pg, ["old_distinct_id"])
    event = make_event("$create_alias", "new_distinct_id", {"alias": "old_distinct_id"})
    assert await ingest_one(kafka_ingestor, event) is Outcome.INGESTED
    out = await produced(tail, producer)
    assert await distinct_ids_of(pg, person_id) == ["old_distinct_id", "new_distinct_id"]
    [added] = values(out[km.TOPIC_PERSON_UNIQUE_ID])
    person_uuid = str(await pg.fetchval("SELECT uuid FROM posthog_person WHERE id = $1", person_id))
    assert (added["distinct_id"], added["person_id"], added["is_deleted"]) == (
        "new_distinct_id",
        person_uuid,
        0,
    )
    assert len(out[km.TOPIC_EVENTS]) == 1


async def test_many_events_of_one_batch_come_out_once_each(
    kafka_ingestor: PostgresIngestor, producer: BatchingProducer, tail: TopicTail
) -> None:
    batch = [make_event("$pageview", f"user-{i % 7}", {"i": i}) for i in range(60)]
    outcomes = await ingest(kafka_ingestor, *batch)
    assert outcomes == [Outcome.INGESTED] * 60
    out = await produced(tail, producer)
    stored = event_messages(out[km.TOPIC_EVENTS])
    assert sorted(m["uuid"] for m in stored) == sorted(e["uuid"] for e in batch)
    assert len(values(out[km.TOPIC_PERSON])) == 7  # one per new person


async def test_5_2_16_an_event_too_large_for_the_broker_is_dead_lettered(
    pg: asyncpg.Pool, settings: Settings, team: int, kafka_bootstrap: str, tail: TopicTail
) -> None:
    """Recommendation of §5.2 #16: check the encoded size and dead-letter the oversized event."""
    small = BatchingProducer(
        AIOKafkaProducer(bootstrap_servers=kafka_bootstrap),
        max_queue_size=1000,
        max_batch_bytes=900_000,
        flush_frequency_ms=500,
        max_message_bytes=20_000,
    )
    await small.start()
    try:
        ingestor = kafka_mode_ingestor(pg, settings, NoPlugins(), small, KafkaDeadLetterQueue(small))
        big = make_event("$pageview", "user-1", {"blob": "x" * 30_000})
        fine = make_event("$pageview", "user-1", {"small": True})
        assert await ingest(ingestor, big, fine) == [Outcome.INGESTED, Outcome.INGESTED]
        out = await produced(tail, small)
    finally:
        await small.stop()
    assert [m["uuid"] for m in event_messages(out[km.TOPIC_EVENTS])] == [fine["uuid"]]
    [dead] = values(out[km.TOPIC_DEAD_LETTER_QUEUE])
    assert dead["event_uuid"] == big["uuid"]
    assert "at most 20000 fit" in dead["error"]
    assert len(dead["raw_payload"]) < 20_000


def test_outbox_is_inactive_outside_a_collection() -> None:
    assert not outbox.active()
    outbox.emit(ProducerRecord("t"))  # nothing collects it: a no-op
    with outbox.collect() as records:
        assert outbox.active()
        outbox.emit(ProducerRecord("kept"))
        with pytest.raises(ValueError), outbox.savepoint():
            outbox.emit(ProducerRecord("dropped"))
            raise ValueError("rolled back")
    assert [r.topic for r in records] == ["kept"]
    assert uuid_module.UUID(uuidt())


async def test_plugin_log_entries_go_to_their_topic_in_kafka_mode(
    pg: asyncpg.Pool, producer: BatchingProducer, kafka_bootstrap: str
) -> None:
    """services §8.2: with a Kafka producer, entries are produced (key = entry id), not inserted."""
    instance_id = uuidt()
    sink = PluginLogSink(pg, instance_id, flush_seconds=60, producer=producer)
    async with TopicTail(kafka_bootstrap, [km.TOPIC_PLUGIN_LOG_ENTRIES]) as logs_tail:
        sink.write(
            LogTarget(team_id=2, plugin_id=60, plugin_config_id=39),
            "SYSTEM",
            "INFO",
            "plugin loaded",
            datetime(2021, 10, 27, 12, 34, 56, 789000, tzinfo=UTC),
        )
        await sink.flush()
        await producer.flush()
        [message] = await logs_tail.read(km.TOPIC_PLUGIN_LOG_ENTRIES, 1)
    entry = json.loads(message.value)
    assert message.key == entry["id"].encode()
    assert entry == {
        "id": entry["id"],
        "team_id": 2,
        "plugin_id": 60,
        "plugin_config_id": 39,
        "timestamp": "2021-10-27 12:34:56.789",
        "source": "SYSTEM",
        "type": "INFO",
        "message": "plugin loaded",
        "instance_id": instance_id,
    }
    assert await pg.fetchval("SELECT count(*) FROM posthog_pluginlogentry") == 0


def _fold_clickhouse_copies(out: dict[str, list[Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """What ClickHouse ends with: the last state of each person (deleted ones dropped) and each
    distinct id's person (a row marked deleted for the person it points at removes it)."""
    persons: dict[str, dict[str, Any]] = {}
    for message in values(out[km.TOPIC_PERSON]):
        persons[message["id"]] = message
    live = {
        uuid: (json.loads(p["properties"]), p["is_identified"])
        for uuid, p in persons.items()
        if p["is_deleted"] == 0
    }
    owners: dict[str, str] = {}
    for message in values(out[km.TOPIC_PERSON_UNIQUE_ID]):
        if message["is_deleted"] == 0:
            owners[message["distinct_id"]] = message["person_id"]
        elif owners.get(message["distinct_id"]) == message["person_id"]:
            del owners[message["distinct_id"]]
    return live, owners


async def test_4_1_35_to_42_clickhouse_copies_match_postgres_after_identify_alias_and_merges(
    pg: asyncpg.Pool, kafka_ingestor: PostgresIngestor, producer: BatchingProducer, tail: TopicTail
) -> None:
    """Scenarios 35-42 in Kafka mode, and the parity of 56-59: replaying the person and
    distinct-id messages in order gives exactly the persons and distinct ids Postgres holds."""
    steps = [
        make_event("x", "person_0", {"$set": {"os": "Microsoft"}}),
        make_event("y", "person_1", {"$set": {"browser": "Chrome"}}),
        make_event("event 1", "anonymous_id"),
        make_event("$identify", "initial_distinct_id", {"$anon_distinct_id": "anonymous_id"}),
        make_event("event 2", "initial_distinct_id"),
        make_event("event 3", "p2_distinct_id"),
        make_event("$identify", "new_distinct_id", {"$anon_distinct_id": "p2_distinct_id"}),
        make_event("event 4", "new_distinct_id", {"$set": {"plan": "pro"}, "$set_once": {"first": 1}}),
        make_event("$identify", "initial_distinct_id", {"$anon_distinct_id": "new_distinct_id"}),
        make_event("$create_alias", "anonymous-2", {"alias": "anonymous-1"}),
        make_event("$create_alias", "person_1", {"alias": "person_0"}),
        make_event("event 5", "person_0", {"$set": {"plan": "free"}}),
    ]
    for step in steps[:7]:
        assert await ingest_one(kafka_ingestor, step) is Outcome.INGESTED
    assert await ingest(kafka_ingestor, *steps[7:]) == [Outcome.INGESTED] * 5
    out = await produced(tail, producer)

    live, owners = _fold_clickhouse_copies(out)
    rows = await pg.fetch("SELECT uuid, properties, is_identified FROM posthog_person")
    assert live == {str(r["uuid"]): (r["properties"], r["is_identified"]) for r in rows}
    id_rows = await pg.fetch(
        "SELECT d.distinct_id, p.uuid FROM posthog_persondistinctid d "
        "JOIN posthog_person p ON p.id = d.person_id"
    )
    assert owners == {r["distinct_id"]: str(r["uuid"]) for r in id_rows}
    # scenario 35: two identified persons; 42: the two unknown ids share one person; merge of 0/1
    assert len(rows) == 4
    groups = sorted(sorted(d for d, p in owners.items() if p == uuid) for uuid in live)
    assert groups == [
        ["anonymous-1", "anonymous-2"],
        ["anonymous_id", "initial_distinct_id"],
        ["new_distinct_id", "p2_distinct_id"],
        ["person_0", "person_1"],
    ]
    assert sorted(m["uuid"] for m in event_messages(out[km.TOPIC_EVENTS])) == sorted(e["uuid"] for e in steps)


async def test_5_2_kafka_mode_takes_what_only_postgres_refuses(
    pg: asyncpg.Pool, kafka_ingestor: PostgresIngestor, producer: BatchingProducer, tail: TopicTail
) -> None:
    """NUL characters in values (5.2 #17), distinct ids over 200 characters (#6) and recordings
    without a session id or data (#15) reach ClickHouse, as in the original's Kafka mode."""
    nul = make_event("e", "nul-user", {"nul": "a\u0000b"})
    long_id = make_event("e", "L" * 250)
    too_long = make_event("e", "L" * 401)
    no_session = make_event("$snapshot", "rec", {"$snapshot_data": {"a": 1}})
    no_data = make_event("$snapshot", "rec", {"$session_id": "s1"})
    outcomes = await ingest(kafka_ingestor, nul, long_id, too_long, no_session, no_data)
    assert outcomes == [Outcome.INGESTED, Outcome.INGESTED, Outcome.DEAD_LETTERED] + [Outcome.INGESTED] * 2
    out = await produced(tail, producer)
    produced_events = {e["uuid"]: e for e in event_messages(out[km.TOPIC_EVENTS])}
    assert json.loads(produced_events[nul["uuid"]]["properties"])["nul"] == "a\u0000b"
    assert produced_events[long_id["uuid"]]["distinct_id"] == "L" * 250
    [dead] = values(out[km.TOPIC_DEAD_LETTER_QUEUE])
    assert dead["event_uuid"] == too_long["uuid"]
    assert "distinct_id is longer than 400 characters" in dead["error"]
    recordings = {r["uuid"]: r for r in values(out[km.TOPIC_SESSION_RECORDING_EVENTS])}
    assert "session_id" not in recordings[no_session["uuid"]]
    assert recordings[no_session["uuid"]]["snapshot_data"] == '{"a":1}'
    assert recordings[no_data["uuid"]]["session_id"] == "s1"
    assert "snapshot_data" not in recordings[no_data["uuid"]]


async def test_5_2_10_null_element_attribute_is_dead_lettered_in_kafka_mode(
    kafka_ingestor: PostgresIngestor, producer: BatchingProducer, tail: TopicTail
) -> None:
    """The original's elements chain fails on a null attribute value (§2.11.3); the next event flows."""
    bad = make_event("$autocapture", "el", {"$elements": [{"tag_name": "a", "attr__class": None}]})
    good = make_event("$autocapture", "el", {"$elements": [{"tag_name": "a", "attr__class": "b a"}]})
    assert await ingest(kafka_ingestor, bad, good) == [Outcome.DEAD_LETTERED, Outcome.INGESTED]
    out = await produced(tail, producer)
    [dead] = values(out[km.TOPIC_DEAD_LETTER_QUEUE])
    assert dead["event_uuid"] == bad["uuid"]
    assert dead["error"].endswith("Cannot read properties of null (reading 'toString')")
    # the event as the original left it: elements taken out, `$ip` added
    assert json.loads(dead["properties"]) == {"$ip": "127.0.0.1"}
    [event] = event_messages(out[km.TOPIC_EVENTS])
    assert event["elements_chain"] == 'a.a.b:attr__class="b a"nth-child="0"nth-of-type="0"'
