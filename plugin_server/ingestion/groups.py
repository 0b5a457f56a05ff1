"""Group types: the per-team `group_type -> index` mapping (at most 5, first come first served)
and the `$group_N` event properties (spec/ingestion.md §2.10). A `$groupidentify` registers its
group type in both modes; Postgres mode stores no group rows."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import asyncpg

from plugin_server.ingestion import queries
from plugin_server.ingestion.js import js_string, truthy
from plugin_server.ingestion.teams import CACHE_SECONDS

MAX_GROUP_TYPES = 5


class GroupTypeStore:
    """Reads and registers group types on the pool (autocommit, like the original)."""

    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._clock = clock
        self._cache: dict[int, tuple[float, dict[str, int]]] = {}

    async def fetch_group_types(self, team_id: int) -> dict[str, int]:
        entry = self._cache.get(team_id)
        if entry is not None and self._clock() - entry[0] <= CACHE_SECONDS:
            return entry[1]
        rows = await self._pool.fetch(queries.SELECT_GROUP_TYPES, team_id)
        mapping = {r["group_type"]: r["group_type_index"] for r in rows}
        self._cache[team_id] = (self._clock(), mapping)
        return mapping

    async def insert_group_type(self, team_id: int, group_type: str, index: int) -> int | None:
        while index < MAX_GROUP_TYPES:
            row = await self._pool.fetchrow(queries.INSERT_GROUP_TYPE, team_id, group_type, index)
            if row is not None:
                return int(row["group_type_index"])
            index += 1  # the index is taken by another type
        return None

    async def fetch_group_type_index(self, team_id: int, group_type: str) -> int | None:
        mapping = await self.fetch_group_types(team_id)
        if group_type in mapping:
            return mapping[group_type]
        index = await self.insert_group_type(team_id, group_type, len(mapping))
        if index is not None:
            self._cache.pop(team_id, None)
        return index

    async def add_group_properties(self, team_id: int, properties: dict[str, Any]) -> dict[str, Any]:
        """Adds `$group_<index>: key` for each entry of `$groups` (registering unknown types)."""
        groups = properties.get("$groups")
        if not groups or not isinstance(groups, dict):
            return properties
        for group_type, group_key in groups.items():
            index = await self.fetch_group_type_index(team_id, group_type)
            if index is not None:
                properties[f"$group_{index}"] = group_key
        return properties

    async def identified_group_type_index(self, team_id: int, properties: dict[str, Any]) -> int | None:
        """`upsert_group`'s look-up for a `$groupidentify`: the index of its `$group_type`,
        registered when new; None without a type and key, or when the team has all it may."""
        group_type, group_key = properties.get("$group_type"), properties.get("$group_key")
        if not truthy(group_type) or not truthy(group_key):
            return None
        return await self.fetch_group_type_index(team_id, js_string(group_type))
