"""Where a batch's events end up. Postgres mode: element groups, `posthog_event`,
`posthog_action_events` and `posthog_sessionrecordingevent`, in the batch's transaction
(spec/ingestion.md §2.6.1, §2.7, §2.11.2); a `$groupidentify` registers its group type (§2.10).
Kafka mode supplies its own writer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import asyncpg

from plugin_server.ingestion import queries
from plugin_server.ingestion.groups import GroupTypeStore
from plugin_server.ingestion.prepare import GROUP_IDENTIFY_EVENT, PreparedEvent


class EventWriter(Protocol):
    async def write(self, conn: asyncpg.Connection, items: Sequence[PreparedEvent]) -> None:
        """Write events, recordings and action matches inside the caller's transaction."""
        ...

    def committed(self, items: Sequence[PreparedEvent]) -> None:
        """The transaction that wrote `items` committed."""
        ...


class PostgresEventWriter:
    def __init__(self, group_types: GroupTypeStore) -> None:
        self._group_types = group_types
        self._known_groups: set[tuple[int, str]] = set()

    async def write(self, conn: asyncpg.Connection, items: Sequence[PreparedEvent]) -> None:
        events = [item for item in items if not item.is_snapshot]
        recordings = [item for item in items if item.is_snapshot]
        for item in events:
            if item.name == GROUP_IDENTIFY_EVENT:
                await self._group_types.identified_group_type_index(item.team.id, item.properties)
        if events:
            await self._write_element_groups(conn, events)
            await self._write_events(conn, events)
        if recordings:
            await conn.execute(
                queries.INSERT_RECORDINGS,
                [r.created_at for r in recordings],
                [r.team.id for r in recordings],
                [r.distinct_id for r in recordings],
                [r.session_id for r in recordings],
                [r.timestamp for r in recordings],
                [r.properties_json for r in recordings],
            )

    def committed(self, items: Sequence[PreparedEvent]) -> None:
        self._known_groups.update((item.team.id, item.elements_hash) for item in items if item.elements_hash)

    async def _write_element_groups(self, conn: asyncpg.Connection, events: Sequence[PreparedEvent]) -> None:
        done: set[tuple[int, str]] = set()
        for item in events:
            key = (item.team.id, item.elements_hash)
            if not item.elements_hash or key in self._known_groups or key in done:
                continue
            done.add(key)
            group_id = await conn.fetchval(queries.INSERT_ELEMENT_GROUP, item.elements_hash, item.team.id)
            if group_id is not None:
                await conn.executemany(
                    queries.INSERT_ELEMENT, [(*row, group_id) for row in item.element_rows]
                )

    @staticmethod
    async def _write_events(conn: asyncpg.Connection, events: Sequence[PreparedEvent]) -> None:
        columns = (
            [e.created_at for e in events],
            [e.name for e in events],
            [e.distinct_id for e in events],
            [e.properties_json for e in events],
            [e.team.id for e in events],
            [e.timestamp for e in events],
            [e.elements_json for e in events],
            [e.elements_hash for e in events],
        )
        if not any(e.matched for e in events):
            await conn.execute(queries.INSERT_EVENTS, *columns)
            return
        ids = [r[0] for r in await conn.fetch(queries.NEXT_EVENT_IDS, len(events))]
        await conn.execute(queries.INSERT_EVENTS_WITH_IDS, *columns, ids)
        event_ids, action_ids = [], []
        for event_id, item in zip(ids, events, strict=True):
            item.event_id = event_id
            for action in item.matched:
                event_ids.append(event_id)
                action_ids.append(action.id)
        await conn.execute(queries.INSERT_ACTION_EVENTS, event_ids, action_ids)
