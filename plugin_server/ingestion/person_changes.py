"""The person side of a batch inside the batch's transaction: identify/alias, persons for new
distinct ids, `$set`/`$set_once` (spec/ingestion.md §2.5, §2.8).

Events are taken in order, in segments that each start at an identify/alias event (the only
events that re-point distinct ids): the segment's alias runs first, then its new persons are
created in bulk, its persons read in one query, property updates applied in event order in
memory, and every changed person written once. The result equals one event at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from plugin_server.ingestion import outbox, queries
from plugin_server.ingestion.identify import alias
from plugin_server.ingestion.js import js_string
from plugin_server.ingestion.persons import (
    Person,
    PersonNotFound,
    SeenDistinctIds,
    apply_property_updates,
    create_person,
    create_persons,
    emitted_person,
    fetch_persons,
    known_distinct_ids,
    person_ids,
)
from plugin_server.ingestion.prepare import PreparedEvent, new_person_uuid
from plugin_server.logs import get_logger

log = get_logger(__name__)

# Errors of one event's data; anything else (lost connection, ...) is an infrastructure failure.
EVENT_DATA_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)


@dataclass(slots=True)
class PersonChanges:
    failures: dict[int, Exception] = field(default_factory=dict)  # position -> why
    seen: set[tuple[int, str]] = field(default_factory=set)  # keys with a person, to cache after commit


async def _create_new_persons(conn: asyncpg.Connection, rows: list[tuple[datetime, int, str, str]]) -> None:
    if not rows:
        return
    try:
        with outbox.savepoint():
            async with conn.transaction():
                await create_persons(conn, rows)
    except asyncpg.UniqueViolationError:
        # Another process created some of them meanwhile: one at a time, skipping those.
        for created_at, team_id, uuid, distinct_id in rows:
            try:
                with outbox.savepoint():
                    async with conn.transaction():
                        await create_person(
                            conn,
                            created_at=created_at,
                            properties={},
                            team_id=team_id,
                            is_identified=False,
                            uuid=uuid,
                            distinct_ids=[distinct_id],
                        )
            except asyncpg.UniqueViolationError:
                pass


async def _run_alias(conn: asyncpg.Connection, item: PreparedEvent, known: set[tuple[int, str]]) -> None:
    assert item.identify is not None
    previous, is_identify = item.identify
    team_id = item.team.id
    try:
        with outbox.savepoint():
            async with conn.transaction():
                await alias(conn, team_id, previous, item.distinct_id, is_identify)
    except Exception as error:  # identify failures never fail the event (as in the original)
        log.warning(
            "identify_failed",
            team_id=team_id,
            distinct_id=item.distinct_id,
            error=str(error) or type(error).__name__,
        )
    else:
        if isinstance(previous, str) and previous == item.distinct_id:
            return  # alias did nothing: the person, if new, is created as for any event
        known.add(item.person_key)
        if previous is not None:
            known.add((team_id, js_string(previous)))


@dataclass(slots=True)
class _PersonProperties:
    """What a property update reads and writes of a person (Postgres mode)."""

    id: int
    properties: dict[str, Any]


async def _load_persons(
    conn: asyncpg.Connection, keys: set[tuple[int, str]]
) -> dict[tuple[int, str], Person | _PersonProperties]:
    by_team: dict[int, list[str]] = {}
    for team_id, distinct_id in keys:
        by_team.setdefault(team_id, []).append(distinct_id)
    loaded: dict[tuple[int, str], Person | _PersonProperties] = {}
    for team_id, distinct_ids in by_team.items():
        if outbox.active():  # Kafka mode sends the whole person after each update
            for distinct_id, person in (await fetch_persons(conn, team_id, distinct_ids)).items():
                loaded[(team_id, distinct_id)] = person
            continue
        for distinct_id, person_id, properties in await conn.fetch(
            queries.SELECT_PERSON_PROPERTIES_BY_DISTINCT_IDS, team_id, distinct_ids
        ):
            loaded[(team_id, distinct_id)] = _PersonProperties(
                person_id, properties if isinstance(properties, dict) else {}
            )
    return loaded


def _segments(items: Sequence[PreparedEvent]) -> list[list[PreparedEvent]]:
    segments: list[list[PreparedEvent]] = [[]]
    for item in items:
        if item.identify is not None and segments[-1]:
            segments.append([])
        segments[-1].append(item)
    return segments


async def apply_person_changes(
    conn: asyncpg.Connection, items: Sequence[PreparedEvent], seen: SeenDistinctIds
) -> PersonChanges:
    result = PersonChanges()
    keys = dict.fromkeys(item.person_key for item in items)
    cached = {key for key in keys if key in seen}
    known = await known_distinct_ids(conn, [key for key in keys if key not in cached])
    known |= cached
    untouched: Sequence[PreparedEvent] = []
    if not outbox.active() and any(item.identify is not None for item in items):
        # Persons no alias of this batch can reach are changed all at once, first; only the
        # events of the others need to wait for the aliases before them.
        untouched, items = await _split_by_aliases(conn, items)
        await _apply_segment(conn, untouched, known, result)
    for segment in _segments(items):
        if segment[0].identify is not None:
            await _run_alias(conn, segment[0], known)
        await _apply_segment(conn, segment, known, result)
    return result


async def _apply_segment(
    conn: asyncpg.Connection,
    segment: Sequence[PreparedEvent],
    known: set[tuple[int, str]],
    result: PersonChanges,
) -> None:
    """Persons for the segment's new distinct ids, then its property updates in event order."""
    new_persons = []
    for item in segment:
        if item.person_key not in known:
            new_persons.append((item.person_created_at, item.team.id, new_person_uuid(), item.distinct_id))
            known.add(item.person_key)
        result.seen.add(item.person_key)
    await _create_new_persons(conn, new_persons)
    updates = [item for item in segment if item.set_props is not None]
    if updates:
        await _apply_property_updates(conn, updates, result)


async def _split_by_aliases(
    conn: asyncpg.Connection, items: Sequence[PreparedEvent]
) -> tuple[list[PreparedEvent], list[PreparedEvent]]:
    """(events no alias of the batch can affect, the rest), each in batch order.

    An alias links or merges only the persons its two distinct ids have when it runs; those are
    persons the batch's alias ids had at its start, or persons made for alias ids during it. So
    an event whose distinct id is not an alias id, and whose person (if it has one) is no alias
    id's person at the start, keeps the same person however its changes and the aliases are
    interleaved: its changes can all be made before the aliases."""
    alias_keys: set[tuple[int, str]] = set()
    for item in items:
        if item.identify is not None:
            alias_keys.add(item.person_key)
            previous = item.identify[0]
            if previous is not None:
                alias_keys.add((item.team.id, js_string(previous)))
    keys = list(dict.fromkeys(item.person_key for item in items) | dict.fromkeys(alias_keys))
    person_of = await person_ids(conn, keys)
    reached = {person_of[key] for key in alias_keys if key in person_of}
    untouched: list[PreparedEvent] = []
    rest: list[PreparedEvent] = []
    for item in items:
        key = item.person_key
        if key in alias_keys or person_of.get(key) in reached:
            rest.append(item)
        else:
            untouched.append(item)
    return untouched, rest


async def _apply_property_updates(
    conn: asyncpg.Connection, updates: list[PreparedEvent], result: PersonChanges
) -> None:
    loaded = await _load_persons(conn, {item.person_key for item in updates})
    by_id: dict[int, Person | _PersonProperties] = {}  # two distinct ids of one person share one object
    persons = {key: by_id.setdefault(person.id, person) for key, person in loaded.items()}
    original = {person.id: person.properties for person in persons.values()}
    # Kafka mode: a person's message is built again only when its properties changed (most
    # `$set_once` events of a known person change nothing and resend the same state).
    emitted: dict[int, tuple[dict[str, Any], Any]] = {}
    for item in updates:
        person = persons.get(item.person_key)
        if person is None:
            result.failures[item.position] = PersonNotFound(
                f'Could not find person with distinct id "{item.distinct_id}" in team "{item.team.id}" '
                "to update properties"
            )
            continue
        person.properties = apply_property_updates(
            person.properties, item.set_props or {}, item.set_once_props or {}
        )
        if isinstance(person, Person):
            # Kafka mode: the person's state after each `$set` event, even when nothing changed
            # (the original wrote and sent it every time).
            last = emitted.get(person.id)
            if last is None or last[0] is not person.properties:
                last = emitted[person.id] = (person.properties, emitted_person(person))
            outbox.emit(last[1])
    changed = {
        p.id: p.properties
        for p in persons.values()
        if p.properties is not original[p.id] and p.properties != original[p.id]
    }
    if changed:
        await conn.executemany(
            queries.UPDATE_PERSON_PROPERTIES, [(props, pid) for pid, props in changed.items()]
        )
