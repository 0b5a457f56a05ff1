"""The Postgres dead-letter queue: every record is stored with its reason, even odd payloads."""

from __future__ import annotations

import asyncpg
import pytest

from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.metrics import REGISTRY


def dead_letter_count(stage: str) -> float:
    return REGISTRY.get_sample_value("plugin_server_dead_letter_total", {"stage": stage}) or 0.0


async def test_record_stores_every_field_and_counts(pg: asyncpg.Pool) -> None:
    dlq = PostgresDeadLetterQueue(pg)
    before = dead_letter_count("test_stage")
    event = {"event": "$pageview", "team_id": 2, "properties": {"a": [1, 2]}}
    await dlq.record(b'{"raw": true}', 'Not a valid UUID: "x"', "test_stage", 2, event)
    row = await pg.fetchrow("SELECT * FROM plugin_server_dead_letter")
    assert row["stage"] == "test_stage"
    assert row["error"] == 'Not a valid UUID: "x"'
    assert row["team_id"] == 2
    assert row["event"] == event
    assert bytes(row["raw"]) == b'{"raw": true}'
    assert row["created_at"] is not None
    assert dead_letter_count("test_stage") == before + 1


async def test_record_without_event_or_team(pg: asyncpg.Pool) -> None:
    await PostgresDeadLetterQueue(pg).record("täxt raw", "bad", "celery_parse")
    row = await pg.fetchrow("SELECT team_id, event, raw FROM plugin_server_dead_letter")
    assert row["team_id"] is None and row["event"] is None
    assert bytes(row["raw"]).decode() == "täxt raw"


@pytest.mark.parametrize("bad_value", ["nul \x00 char", "lone \ud800 surrogate"])
async def test_event_postgres_refuses_is_kept_as_raw_with_a_note(pg: asyncpg.Pool, bad_value: str) -> None:
    raw = b"the original message"
    await PostgresDeadLetterQueue(pg).record(raw, "why \x00 it failed", "pipeline", 2, {"event": bad_value})
    row = await pg.fetchrow("SELECT error, event, raw FROM plugin_server_dead_letter")
    assert row["event"] is None
    assert bytes(row["raw"]) == raw
    assert row["error"].startswith("why \\u0000 it failed (event not storable as jsonb")


async def test_record_raises_when_postgres_is_unreachable() -> None:
    # Nothing listens on port 1: the failure must reach the caller, who then keeps the message.
    pool = await asyncpg.create_pool("postgres://postgres@127.0.0.1:1/postgres", min_size=0, max_size=1)
    assert pool is not None
    try:
        with pytest.raises(OSError):
            await PostgresDeadLetterQueue(pool).record(b"x", "e", "s")
    finally:
        await pool.close()
