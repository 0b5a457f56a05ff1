"""Persons and their distinct ids in Postgres: the "seen" cache, creation, property updates
(spec/ingestion.md §2.8). Every function takes the connection of the caller's transaction."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from plugin_server.ingestion import outbox, queries
from plugin_server.ingestion.js import js_string
from plugin_server.ingestion.kafka_messages import person_distinct_id_record, person_record

SEEN_SECONDS = 3600.0


class SeenDistinctIds:
    """LRU of `(team_id, distinct_id)` known to have a person; entries expire an hour after their
    last read (§2.8.1). A key is only added once the transaction that made it true committed."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[tuple[int, str], float] = OrderedDict()

    def __contains__(self, key: tuple[int, str]) -> bool:
        seen_at = self._entries.get(key)
        if seen_at is None:
            return False
        now = self._clock()
        if now - seen_at > SEEN_SECONDS:
            del self._entries[key]
            return False
        self._entries[key] = now
        self._entries.move_to_end(key)
        return True

    def add_all(self, keys: Iterable[tuple[int, str]]) -> None:
        if self._capacity <= 0:
            return
        now = self._clock()
        entries = self._entries
        for key in keys:
            entries[key] = now
            entries.move_to_end(key)
        while len(entries) > self._capacity:
            entries.popitem(last=False)


@dataclass(slots=True)
class Person:
    id: int
    created_at: datetime
    team_id: int
    properties: dict[str, Any]
    is_identified: bool
    uuid: str
    record: Mapping[str, Any]  # every column of the fetch (JSON columns decoded by the pool's codec)

    @property
    def row(self) -> dict[str, Any]:
        """The fetched columns as the REST hook payload shows them (built only when asked:
        most persons are read for a property update only)."""
        row = dict(self.record)
        if "uuid" in row:
            row["uuid"] = str(row["uuid"])
        return row

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Person:
        properties = record["properties"]
        return cls(
            id=record["id"],
            created_at=record["created_at"],
            team_id=record["team_id"],
            properties=properties if isinstance(properties, dict) else {},
            is_identified=record["is_identified"],
            uuid=str(record["uuid"]),
            record=record,
        )


class PersonNotFound(LookupError):
    pass


async def fetch_person(conn: asyncpg.Connection, team_id: int, distinct_id: Any) -> Person | None:
    if distinct_id is None:
        return None
    record = await conn.fetchrow(queries.SELECT_PERSON, team_id, _as_text(distinct_id))
    return Person.from_record(record) if record else None


async def fetch_persons(
    conn: asyncpg.Connection, team_id: int, distinct_ids: Sequence[str]
) -> dict[str, Person]:
    records = await conn.fetch(queries.SELECT_PERSONS_BY_DISTINCT_IDS, team_id, list(distinct_ids))
    return {r["persondistinctid__distinct_id"]: Person.from_record(r) for r in records}


async def known_distinct_ids(
    conn: asyncpg.Connection | asyncpg.Pool, keys: Sequence[tuple[int, str]]
) -> set[tuple[int, str]]:
    """Which of the keys already have a person (one query for a whole batch)."""
    if not keys:
        return set()
    records = await conn.fetch(queries.SELECT_KNOWN_DISTINCT_IDS, [k[0] for k in keys], [k[1] for k in keys])
    return {(r["team_id"], r["distinct_id"]) for r in records}


async def person_ids(conn: asyncpg.Connection, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """The person id of each key that has a person (one query)."""
    if not keys:
        return {}
    records = await conn.fetch(queries.SELECT_PERSON_IDS, [k[0] for k in keys], [k[1] for k in keys])
    return {(r["team_id"], r["distinct_id"]): r["person_id"] for r in records}


def _as_text(distinct_id: Any) -> str | None:
    # Postgres compared non-string ids as text in the original; a missing id stays NULL (and fails).
    return None if distinct_id is None else js_string(distinct_id)


async def create_person(
    conn: asyncpg.Connection,
    *,
    created_at: datetime,
    properties: dict[str, Any],
    team_id: int,
    is_identified: bool,
    uuid: str,
    distinct_ids: Sequence[Any],
) -> Person:
    """The person row then its distinct ids, in the caller's transaction."""
    record = await conn.fetchrow(queries.INSERT_PERSON, created_at, properties, team_id, is_identified, uuid)
    assert record is not None
    person = Person.from_record(record)
    if not outbox.active():
        for distinct_id in distinct_ids:
            await conn.execute(queries.INSERT_DISTINCT_ID, _as_text(distinct_id), person.id, team_id)
        return person
    messages = [emitted_person(person)]
    for distinct_id in distinct_ids:
        row = await conn.fetchrow(
            queries.INSERT_DISTINCT_ID_RETURNING, _as_text(distinct_id), person.id, team_id
        )
        messages.append(person_distinct_id_record(dict(row), person.uuid))
    outbox.emit(*messages)
    return person


def emitted_person(person: Person, is_deleted: int = 0) -> Any:
    """The ClickHouse copy of a person's state (Kafka mode)."""
    return person_record(
        uuid=person.uuid,
        created_at=person.created_at,
        properties=person.properties,
        team_id=person.team_id,
        is_identified=person.is_identified,
        is_deleted=is_deleted,
    )


async def create_persons(
    conn: asyncpg.Connection, new_persons: Sequence[tuple[datetime, int, str, str]]
) -> None:
    """Bulk create unidentified persons without properties: (created_at, team_id, uuid, distinct_id)."""
    if not new_persons:
        return
    records = await conn.fetch(
        queries.INSERT_PERSONS,
        [p[0] for p in new_persons],
        [p[1] for p in new_persons],
        [p[2] for p in new_persons],
    )
    ids = {str(r["uuid"]): r["id"] for r in records}
    columns = ([p[3] for p in new_persons], [ids[p[2]] for p in new_persons], [p[1] for p in new_persons])
    if not outbox.active():
        await conn.execute(queries.INSERT_DISTINCT_IDS, *columns)
        return
    rows = await conn.fetch(queries.INSERT_DISTINCT_IDS_RETURNING, *columns)
    row_of = {row["person_id"]: dict(row) for row in rows}
    messages = []
    for created_at, team_id, uuid, _distinct_id in new_persons:
        person = person_record(
            uuid=uuid, created_at=created_at, properties={}, team_id=team_id, is_identified=False
        )
        messages.append(person)
        messages.append(person_distinct_id_record(row_of[ids[uuid]], uuid))
    outbox.emit(*messages)


async def add_distinct_id(conn: asyncpg.Connection, person: Person, distinct_id: Any) -> None:
    if not outbox.active():
        await conn.execute(queries.INSERT_DISTINCT_ID, _as_text(distinct_id), person.id, person.team_id)
        return
    row = await conn.fetchrow(
        queries.INSERT_DISTINCT_ID_RETURNING, _as_text(distinct_id), person.id, person.team_id
    )
    outbox.emit(person_distinct_id_record(dict(row), person.uuid))


def apply_property_updates(
    properties: dict[str, Any], set_props: dict[str, Any], set_once_props: dict[str, Any]
) -> dict[str, Any]:
    """`$set_once` fills keys not present (even a stored null counts); `$set` overrides (§2.8.4).
    Returns `properties` itself when nothing changes (callers may test identity), else a copy."""
    updated: dict[str, Any] | None = None
    for key, value in set_once_props.items():
        if key not in properties:
            if updated is None:
                updated = dict(properties)
            updated[key] = value
    for key, value in set_props.items():
        current = properties.get(key, _ABSENT)
        if isinstance(value, dict | list) or current != value or type(current) is not type(value):
            if updated is None:
                updated = dict(properties)
            updated[key] = value
    return properties if updated is None else updated


_ABSENT: Any = object()
