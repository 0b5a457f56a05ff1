"""Team and organization rows, cached for 30 s (spec/ingestion.md §2.14); a missing row is
looked up again every time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from plugin_server.ingestion import queries

CACHE_SECONDS = 30.0


@dataclass(slots=True)
class Team:
    id: int
    uuid: str
    organization_id: str
    name: str
    anonymize_ips: bool
    ingested_event: bool
    slack_incoming_webhook: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Team:
        return cls(
            id=row["id"],
            uuid=str(row["uuid"]),
            organization_id=str(row["organization_id"]),
            name=row["name"],
            anonymize_ips=row["anonymize_ips"],
            ingested_event=row["ingested_event"],
            slack_incoming_webhook=row["slack_incoming_webhook"],
        )


class _TimedCache[K, V]:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry[0] > CACHE_SECONDS:
            return None
        return entry[1]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock(), value)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)


class TeamCache:
    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._cache: _TimedCache[int, Team] = _TimedCache(clock)

    async def get(self, team_id: Any) -> Team | None:
        if not isinstance(team_id, int) or isinstance(team_id, bool) or not -(2**31) <= team_id < 2**31:
            return None
        team = self._cache.get(team_id)
        if team is None:
            row = await self._pool.fetchrow(queries.SELECT_TEAM, team_id)
            if row is None:
                return None
            team = Team.from_row(row)
            self._cache.put(team_id, team)
        return team


@dataclass(slots=True)
class Organization:
    id: str
    available_features: list[str]


class OrganizationCache:
    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._cache: _TimedCache[str, Organization] = _TimedCache(clock)

    async def get(self, organization_id: str) -> Organization | None:
        organization = self._cache.get(organization_id)
        if organization is None:
            row = await self._pool.fetchrow(queries.SELECT_ORGANIZATION, organization_id)
            if row is None:
                return None
            organization = Organization(str(row["id"]), list(row["available_features"] or []))
            self._cache.put(organization_id, organization)
        return organization
