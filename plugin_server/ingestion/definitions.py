"""Event and property definitions: every event name and property key a team has sent
(spec/ingestion.md §2.9). Name sets are loaded once per team and only grow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from plugin_server.ingestion import queries
from plugin_server.ingestion.uuidt import uuidt

PLUGIN_METRICS_EVENT = "$$plugin_metrics"


@dataclass(slots=True)
class NewDefinitions:
    """Definitions a batch adds, in first-seen order: (team_id, name) and (team_id, name, is_numerical)."""

    events: dict[tuple[int, str], None] = field(default_factory=dict)
    properties: dict[tuple[int, str], bool] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.events or self.properties)


def is_numerical(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class DefinitionStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._event_names: dict[int, set[str]] = {}
        self._property_names: dict[int, set[str]] = {}

    async def load(self, team_id: int) -> None:
        if team_id not in self._event_names:
            rows = await self._pool.fetch(queries.SELECT_EVENT_DEFINITION_NAMES, team_id)
            self._event_names[team_id] = {r["name"] for r in rows}
        if team_id not in self._property_names:
            rows = await self._pool.fetch(queries.SELECT_PROPERTY_DEFINITION_NAMES, team_id)
            self._property_names[team_id] = {r["name"] for r in rows}

    def collect(self, new: NewDefinitions, team_id: int, event_name: str, properties: dict[str, Any]) -> None:
        """Note what this event adds (`load(team_id)` must have run)."""
        if event_name == PLUGIN_METRICS_EVENT:
            return
        if event_name not in self._event_names[team_id]:
            new.events.setdefault((team_id, event_name), None)
        known = self._property_names[team_id]
        if properties.keys() <= known:  # the usual case, checked in one set operation
            return
        for key, value in properties.items():
            if key not in known and (team_id, key) not in new.properties:
                new.properties[(team_id, key)] = is_numerical(value)

    @staticmethod
    async def write(conn: asyncpg.Connection, new: NewDefinitions) -> None:
        if new.events:
            await conn.executemany(
                queries.INSERT_EVENT_DEFINITION, [(uuidt(), name, team) for team, name in new.events]
            )
        if new.properties:
            await conn.executemany(
                queries.INSERT_PROPERTY_DEFINITION,
                [(uuidt(), name, numerical, team) for (team, name), numerical in new.properties.items()],
            )

    def committed(self, new: NewDefinitions) -> None:
        for team, name in new.events:
            self._event_names[team].add(name)
        for team, name in new.properties:
            self._property_names[team].add(name)
