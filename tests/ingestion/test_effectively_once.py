"""A Celery message's effects are committed once, however often it is delivered: its id is
remembered in the transaction that writes its rows (or its dead-letter record)."""

from __future__ import annotations

import asyncpg

from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.ingestion.types import IncomingEvent, Outcome
from plugin_server.queues.celery_format import encode_celery_event, event_from_task, parse_celery_message
from tests.factories import TEAM_ID

NOW = "2021-10-28T12:00:01.123456+00:00"


_messages: dict[tuple[int, str], bytes] = {}


def delivered(seq: int, **data: str) -> IncomingEvent:
    """The same message each time it is called with the same arguments (a re-delivery)."""
    key = (seq, repr(data))
    if key not in _messages:
        _messages[key] = encode_celery_event(
            "user-1",
            "127.0.0.1",
            "http://localhost",
            {"event": "$pageview", "properties": {"seq": seq, "$set": {"n": seq}}, **data},
            TEAM_ID,
            NOW,
            None,
            queue="q",
        ).encode()
    raw = _messages[key]
    return event_from_task(parse_celery_message(raw), raw)


async def stored_seqs(pg: asyncpg.Pool) -> list[int]:
    rows = await pg.fetch("SELECT (properties->>'seq')::int AS seq FROM posthog_event ORDER BY seq")
    return [r["seq"] for r in rows]


async def test_a_message_delivered_again_is_skipped(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    first = [delivered(i) for i in range(3)]
    assert await ingestor.ingest(first) == [Outcome.INGESTED] * 3
    again = [delivered(1), delivered(3), delivered(2)]
    assert [e.message_id for e in again[::2]] == [first[1].message_id, first[2].message_id]
    assert await ingestor.ingest(again) == [Outcome.DUPLICATE, Outcome.INGESTED, Outcome.DUPLICATE]
    assert await stored_seqs(pg) == [0, 1, 2, 3]
    assert await pg.fetchval("SELECT count(*) FROM plugin_server_ingested_message") == 4


async def test_the_same_message_twice_in_one_batch_is_written_once(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    outcomes = await ingestor.ingest([delivered(5), delivered(5)])
    assert outcomes == [Outcome.INGESTED, Outcome.DUPLICATE]
    assert await stored_seqs(pg) == [5]


async def test_a_dead_lettered_message_delivered_again_is_not_recorded_twice(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    bad = delivered(7, timestamp="not a time at all")
    assert await ingestor.ingest([bad]) == [Outcome.DEAD_LETTERED]
    await ingestor.ingest([delivered(7, timestamp="not a time at all")])
    await PostgresDeadLetterQueue(pg).record(bad.raw, "again", "stage", TEAM_ID, message_id=bad.message_id)
    assert await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter") == 1
    # without an id (Kafka mode) every record is kept
    await PostgresDeadLetterQueue(pg).record(bad.raw, "again", "stage", TEAM_ID)
    assert await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter") == 2


async def test_events_without_a_message_id_are_not_remembered(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    event = delivered(9)
    event.message_id = None
    await ingestor.ingest([event])
    event.event["uuid"] = delivered(10).event["uuid"]
    await ingestor.ingest([event])
    assert await stored_seqs(pg) == [9, 9]
    assert await pg.fetchval("SELECT count(*) FROM plugin_server_ingested_message") == 0


async def test_remembered_messages_are_forgotten_after_a_day(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    await ingestor.ingest([delivered(1), delivered(2)])
    await pg.execute(
        "UPDATE plugin_server_ingested_message SET created_at = now() - interval '25 hours' WHERE id = $1",
        delivered(1).message_id,
    )
    assert await ingestor.prune_remembered() == 1
    assert await pg.fetchval("SELECT count(*) FROM plugin_server_ingested_message") == 1


async def test_a_batch_delivered_again_whole_is_all_duplicates(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    batch = [delivered(i) for i in range(4)]
    assert await ingestor.ingest(batch) == [Outcome.INGESTED] * 4
    assert await ingestor.ingest([delivered(i) for i in range(4)]) == [Outcome.DUPLICATE] * 4
    assert await stored_seqs(pg) == [0, 1, 2, 3]
    assert await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter") == 0
