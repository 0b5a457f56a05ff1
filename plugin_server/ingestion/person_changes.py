"""The person side of a batch, in event order inside the batch's transaction: identify/alias,
creating persons for new distinct ids, `$set`/`$set_once` (spec/ingestion.md §2.5, §2.8).
New persons are created in bulk until an event needs to read persons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from plugin_server.ingestion import outbox
from plugin_server.ingestion.identify import alias
from plugin_server.ingestion.persons import (
    PersonNotFound,
    SeenDistinctIds,
    create_person,
    create_persons,
    known_distinct_ids,
    update_person_properties,
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

_EVENT_FAILURES: tuple[type[Exception], ...] = (PersonNotFound, *EVENT_DATA_ERRORS)


@dataclass(slots=True)
class PersonChanges:
    failures: dict[int, Exception] = field(default_factory=dict)  # position -> why
    seen: set[tuple[int, str]] = field(default_factory=set)  # keys with a person, to cache after commit


class _PendingPersons:
    def __init__(self) -> None:
        self.rows: list[tuple[datetime, int, str, str]] = []

    async def flush(self, conn: asyncpg.Connection) -> None:
        rows, self.rows = self.rows, []
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


async def apply_person_changes(
    conn: asyncpg.Connection, items: Sequence[PreparedEvent], seen: SeenDistinctIds
) -> PersonChanges:
    result = PersonChanges()
    unseen = list(dict.fromkeys(item.person_key for item in items if item.person_key not in seen))
    known = await known_distinct_ids(conn, unseen)
    pending = _PendingPersons()
    for item in items:
        team_id = item.team.id
        if item.identify is not None:
            previous, is_identify = item.identify
            await pending.flush(conn)
            try:
                with outbox.savepoint():
                    async with conn.transaction():
                        await alias(conn, team_id, previous, item.distinct_id, is_identify)
            except Exception as error:  # the original swallowed identify failures too
                log.warning(
                    "identify_failed",
                    team_id=team_id,
                    distinct_id=item.distinct_id,
                    error=str(error) or type(error).__name__,
                )
            else:
                known.add(item.person_key)
                if isinstance(previous, str):
                    known.add((team_id, previous))
        key = item.person_key
        if key not in known and key not in result.seen and key not in seen:
            pending.rows.append((item.person_created_at, team_id, new_person_uuid(), item.distinct_id))
            known.add(key)
        result.seen.add(key)
        if item.set_props is not None:
            await pending.flush(conn)
            try:
                with outbox.savepoint():
                    async with conn.transaction():
                        await update_person_properties(
                            conn, team_id, item.distinct_id, item.set_props, item.set_once_props or {}
                        )
            except _EVENT_FAILURES as error:
                result.failures[item.position] = error
    await pending.flush(conn)
    return result
