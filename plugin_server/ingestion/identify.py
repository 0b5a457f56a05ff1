"""`$identify` and `$create_alias`: linking distinct ids and merging persons (spec/ingestion.md §2.5).
A merge is atomic here: the distinct-id move runs inside the merge transaction (§2.5.3 Recommendation)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import asyncpg

from plugin_server.ingestion import outbox, queries
from plugin_server.ingestion.js import truthy
from plugin_server.ingestion.kafka_messages import person_distinct_id_move_record
from plugin_server.ingestion.persons import (
    Person,
    add_distinct_id,
    create_person,
    emitted_person,
    fetch_person,
)
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.logs import get_logger

log = get_logger(__name__)

MAX_MERGE_ATTEMPTS = 3
_ILLEGAL_LOWERCASE = frozenset(
    {
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "undefined",
        "true",
        "false",
    }
)
_ILLEGAL_EXACT = frozenset({"[object Object]", "NaN", "None", "none", "null", "0"})


class MergeRaceError(RuntimeError):
    """A person taking part in a merge disappeared meanwhile; not retried."""


def is_illegal_distinct_id(distinct_id: str) -> bool:
    return (
        not distinct_id.strip() or distinct_id.lower() in _ILLEGAL_LOWERCASE or distinct_id in _ILLEGAL_EXACT
    )


def identify_plan(event_name: Any, distinct_id: str, properties: dict[str, Any]) -> tuple[Any, bool] | None:
    """(previous distinct id, identify?) when the event links two ids, else None (§2.5.1)."""
    if is_illegal_distinct_id(distinct_id):
        return None
    if event_name == "$create_alias":
        return properties.get("alias"), False
    if event_name == "$identify":
        anon = properties.get("$anon_distinct_id")
        if truthy(anon):
            return anon, True
    return None


async def alias(
    conn: asyncpg.Connection,
    team_id: int,
    previous: Any,
    current: str,
    identify: bool,
    *,
    retry_if_failed: bool = True,
    merge_attempts: int = 0,
) -> None:
    """Link `previous` to `current`'s person (§2.5.2). Runs in savepoints of the caller's transaction."""
    if isinstance(previous, str) and previous == current:
        return
    old = await fetch_person(conn, team_id, previous)
    new = await fetch_person(conn, team_id, current)
    current_person: Person | None = None  # `current`'s person when known without asking again
    if old is not None and new is not None:
        if old.id != new.id:
            if identify and old.is_identified:
                log.warning(
                    "identify_refused_merge", team_id=team_id, distinct_id=current, previous=str(previous)
                )
                current_person = new
            else:
                await merge_people(conn, new, current, old, previous, identify, merge_attempts)
        else:
            current_person = new
    else:
        try:
            with outbox.savepoint():
                async with conn.transaction():
                    if old is not None:
                        await add_distinct_id(conn, old, current)
                        current_person = old
                    elif new is not None:
                        await add_distinct_id(conn, new, previous)
                        current_person = new
                    else:
                        current_person = await create_person(
                            conn,
                            created_at=datetime.now(UTC),
                            properties={},
                            team_id=team_id,
                            is_identified=identify,
                            uuid=uuidt(),
                            distinct_ids=[current, previous],
                        )
        except asyncpg.PostgresError:
            if not retry_if_failed:
                raise
            current_person = None
            await alias(conn, team_id, previous, current, identify, retry_if_failed=False)
    if identify:
        await set_is_identified(conn, team_id, current, current_person)


async def set_is_identified(
    conn: asyncpg.Connection, team_id: int, distinct_id: str, person: Person | None = None
) -> None:
    """Mark `distinct_id`'s person identified; `person` is that person when the caller knows it."""
    if person is None:
        person = await fetch_person(conn, team_id, distinct_id)
    if person is None:
        raise LookupError(
            f'Could not find person with distinct id "{distinct_id}" in team "{team_id}" to identify'
        )
    if not person.is_identified:
        await conn.execute(queries.SET_PERSON_IDENTIFIED, person.id)
        if outbox.active():
            person.is_identified = True
            outbox.emit(emitted_person(person))


async def merge_people(
    conn: asyncpg.Connection,
    merge_into: Person,
    merge_into_distinct_id: str,
    other: Person,
    other_distinct_id: Any,
    identify: bool,
    merge_attempts: int = 0,
) -> None:
    """Fold `other` into `merge_into` in one transaction (savepoint): properties (the survivor wins),
    earliest created_at, cohort memberships and distinct ids move, `other` is deleted (§2.5.3)."""
    first_seen = min(merge_into.created_at, other.created_at)
    merged = {**other.properties, **merge_into.properties}
    try:
        with outbox.savepoint():
            async with conn.transaction():
                await _merge(conn, merge_into, other, first_seen, merged)
    except asyncpg.ForeignKeyViolationError as error:
        raise MergeRaceError("Failed to move distinct ids: target person no longer exists") from error
    except asyncpg.PostgresError:
        merge_attempts += 1
        if merge_attempts >= MAX_MERGE_ATTEMPTS:
            raise
        await alias(
            conn,
            merge_into.team_id,
            other_distinct_id,
            merge_into_distinct_id,
            identify,
            retry_if_failed=False,
            merge_attempts=merge_attempts,
        )


async def _merge(
    conn: asyncpg.Connection, merge_into: Person, other: Person, first_seen: datetime, merged: dict[str, Any]
) -> None:
    is_identified = merge_into.is_identified or other.is_identified
    await conn.execute(queries.MERGE_INTO_PERSON, first_seen, merged, is_identified, merge_into.id)
    await conn.execute(queries.MOVE_COHORT_PEOPLE, merge_into.id, other.id)
    moved = await conn.fetch(queries.MOVE_DISTINCT_IDS, merge_into.id, other.id, merge_into.team_id)
    if not moved:
        raise MergeRaceError("Failed to move distinct ids: source person no longer exists")
    await conn.execute(queries.DELETE_PERSON, merge_into.team_id, other.id)
    if outbox.active():
        # ClickHouse copies: the survivor's new state, each moved id (now on the survivor, no
        # longer on the other), then the other person deleted (§3.3.3-§3.3.4).
        survivor = dataclasses.replace(
            merge_into, created_at=first_seen, properties=merged, is_identified=is_identified
        )
        messages = [emitted_person(survivor)]
        for row in moved:
            # the moved row's columns in table order; person_id is filled in per message
            columns = {"team_id": merge_into.team_id, "person_id": None, "distinct_id": row["distinct_id"]}
            messages.append(person_distinct_id_move_record(columns, merge_into.uuid, other.uuid))
        messages.append(emitted_person(other, is_deleted=1))
        outbox.emit(*messages)
