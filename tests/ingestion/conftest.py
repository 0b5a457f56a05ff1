"""Fixtures for ingestion tests: the spec's fixture rows (team 2, action 69), a Postgres-mode
ingestor with no plugins, and helpers to build events and read rows back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from plugin_server.config import Settings
from plugin_server.ingestion.api import NoPlugins
from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.ingestion.types import IncomingEvent, Outcome, PluginEvent
from plugin_server.ingestion.uuidt import uuidt
from tests.factories import TEAM_ID, create_team, insert_row


async def create_action_69(pg: asyncpg.Pool) -> None:
    await insert_row(
        pg,
        "posthog_action",
        {
            "id": 69,
            "name": "Test Action",
            "team_id": TEAM_ID,
            "post_to_slack": True,
            "slack_message_format": "",
        },
    )
    await insert_row(
        pg,
        "posthog_actionstep",
        {
            "id": 913,
            "action_id": 69,
            "url_matching": "contains",
            "properties": [{"key": "foo", "type": "event", "value": ["bar"], "operator": "exact"}],
        },
    )


@pytest.fixture
async def team(pg: asyncpg.Pool) -> int:
    await create_team(pg, TEAM_ID, ingested_event=True)
    await create_action_69(pg)
    return TEAM_ID


@pytest.fixture
def dead_letters(pg: asyncpg.Pool) -> PostgresDeadLetterQueue:
    return PostgresDeadLetterQueue(pg)


async def dead_letter_rows(pg: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pg.fetch(
        "SELECT stage, error, team_id, event, raw FROM plugin_server_dead_letter ORDER BY id"
    )
    return [dict(r) for r in rows]


@pytest.fixture
async def ingestor(
    pg: asyncpg.Pool, settings: Settings, team: int, dead_letters: PostgresDeadLetterQueue
) -> AsyncIterator[PostgresIngestor]:
    ingestor = PostgresIngestor(pg, settings, NoPlugins(), dead_letters)
    await ingestor.start()
    yield ingestor
    await ingestor.stop()


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(
    name: Any = "$pageview",
    distinct_id: Any = "user-1",
    properties: dict[str, Any] | None = None,
    *,
    team_id: Any = TEAM_ID,
    now: datetime | None = None,
    sent_at: Any = "now",
    ip: str | None = "127.0.0.1",
    site_url: str | None = "https://posthog.com",
    **top_level: Any,
) -> PluginEvent:
    """A PluginEvent as the queue consumers assemble it."""
    now = now or datetime.now(UTC)
    event: PluginEvent = {
        "distinct_id": distinct_id,
        "ip": ip,
        "site_url": site_url,
        "team_id": team_id,
        "now": now.isoformat(),
        "sent_at": iso(now) if sent_at == "now" else sent_at,
        "uuid": uuidt(),
        "event": name,
        "properties": properties if properties is not None else {},
    }
    event.update(top_level)
    return event


def incoming(event: PluginEvent) -> IncomingEvent:
    team_id = event.get("team_id")
    return IncomingEvent(
        team_id=team_id if isinstance(team_id, int) else 0,
        event=event,
        raw=json.dumps(event, default=str),
        source="celery",
    )


async def ingest(ingestor: PostgresIngestor, *events: PluginEvent) -> list[Outcome]:
    return await ingestor.ingest([incoming(e) for e in events])


async def ingest_one(ingestor: PostgresIngestor, event: PluginEvent) -> Outcome:
    (outcome,) = await ingest(ingestor, event)
    return outcome


# -- reading rows back


async def events(pg: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pg.fetch("SELECT * FROM posthog_event ORDER BY timestamp, id")


async def persons(pg: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pg.fetch("SELECT * FROM posthog_person ORDER BY id")


async def distinct_ids_of(pg: asyncpg.Pool, person_id: int) -> list[str]:
    rows = await pg.fetch(
        "SELECT distinct_id FROM posthog_persondistinctid WHERE person_id = $1 ORDER BY id", person_id
    )
    return [r["distinct_id"] for r in rows]


async def person_of(pg: asyncpg.Pool, distinct_id: str, team_id: int = TEAM_ID) -> asyncpg.Record | None:
    return await pg.fetchrow(
        """SELECT p.* FROM posthog_person p JOIN posthog_persondistinctid d ON d.person_id = p.id
           WHERE d.team_id = $1 AND d.distinct_id = $2""",
        team_id,
        distinct_id,
    )


async def make_person(
    pg: asyncpg.Pool,
    distinct_ids: list[str],
    properties: dict[str, Any] | None = None,
    *,
    team_id: int = TEAM_ID,
    created_at: datetime | None = None,
    is_identified: bool = False,
) -> int:
    """mkperson of the spec: a person (not identified) with these distinct ids."""
    async with pg.acquire() as conn, conn.transaction():
        person_id = await conn.fetchval(
            """INSERT INTO posthog_person (created_at, properties, properties_last_updated_at, team_id,
                   is_identified, uuid) VALUES ($1, $2, '{}', $3, $4, $5) RETURNING id""",
            created_at or datetime.now(UTC),
            properties or {},
            team_id,
            is_identified,
            uuidt(),
        )
        for distinct_id in distinct_ids:
            await conn.execute(
                "INSERT INTO posthog_persondistinctid (distinct_id, person_id, team_id) VALUES ($1, $2, $3)",
                distinct_id,
                person_id,
                team_id,
            )
    return int(person_id)
