"""Where the historical export reads a team's stored events (plugins §3.9).

One small interface, two stores: Postgres mode reads `posthog_event`; Kafka mode reads
ClickHouse's `events` table over the native protocol (asynch). Times are epoch milliseconds;
an interval is `[start, end)`. Rows come back as the events `exportEvents` receives.

ClickHouse is read as the original did: bounds and intervals on `_timestamp` (the time the row
was ingested, whole seconds), pages in `_offset` order. Both ends of an interval are rounded up
to the second, so consecutive intervals share no second and miss none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from asynch import Connection

from plugin_server.config import Settings
from plugin_server.logs import get_logger

log = get_logger(__name__)

CLICKHOUSE_PORT, CLICKHOUSE_SECURE_PORT = 9000, 9440
CLICKHOUSE_PING_SECONDS = 10.0
CLICKHOUSE_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class TimestampBounds:
    """The first and last event time of a team (epoch ms), None when it has no events."""

    min_ms: int | None
    max_ms: int | None


class EventSource(Protocol):
    name: str

    async def bounds(self, team_id: int) -> TimestampBounds: ...

    async def page(
        self, team_id: int, start_ms: int, end_ms: int, offset: int, limit: int
    ) -> list[dict[str, Any]]:
        """Events of the team with start ≤ time < end, in a stable order, `limit` from `offset`."""
        ...

    async def first_after(self, team_id: int, start_ms: int, end_ms: int) -> int | None:
        """The earliest event time in [start, end), to skip empty intervals; None if there is none."""
        ...


def iso_ms(moment: datetime) -> str:
    """JavaScript's toISOString: UTC, milliseconds, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp() * 1000)


def plugin_event(
    team_id: int,
    event: str | None,
    distinct_id: str,
    properties: Any,
    timestamp: datetime,
    created_at: datetime | None,
    now: str,
) -> dict[str, Any]:
    """A stored event as exportEvents gets it (no uuid, no elements, as the original builds it)."""
    properties = properties if isinstance(properties, dict) else {}
    return {
        "team_id": team_id,
        "distinct_id": distinct_id,
        "properties": properties,
        "timestamp": iso_ms(timestamp),
        "now": now,
        "event": event or "",
        "ip": properties.get("$ip") or "",
        "site_url": "",
        "sent_at": iso_ms(created_at) if created_at is not None else None,
    }


def _now() -> str:
    return iso_ms(datetime.now(UTC))


def _from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


class PostgresEventSource:
    name = "postgres"

    def __init__(self, pg: asyncpg.Pool) -> None:
        self._pg = pg

    async def bounds(self, team_id: int) -> TimestampBounds:
        row = await self._pg.fetchrow(
            "SELECT min(timestamp) AS low, max(timestamp) AS high FROM posthog_event WHERE team_id = $1",
            team_id,
        )
        low, high = (row["low"], row["high"]) if row else (None, None)
        return TimestampBounds(
            epoch_ms(low) if low is not None else None, epoch_ms(high) if high is not None else None
        )

    async def page(
        self, team_id: int, start_ms: int, end_ms: int, offset: int, limit: int
    ) -> list[dict[str, Any]]:
        rows = await self._pg.fetch(
            """
            SELECT event, distinct_id, properties, timestamp, created_at FROM posthog_event
            WHERE team_id = $1 AND timestamp >= $2 AND timestamp < $3
            ORDER BY id LIMIT $4 OFFSET $5
            """,
            team_id,
            _from_ms(start_ms),
            _from_ms(end_ms),
            limit,
            offset,
        )
        now = _now()
        return [
            plugin_event(
                team_id,
                r["event"],
                r["distinct_id"],
                _json(r["properties"]),
                r["timestamp"],
                r["created_at"],
                now,
            )
            for r in rows
        ]

    async def first_after(self, team_id: int, start_ms: int, end_ms: int) -> int | None:
        first = await self._pg.fetchval(
            "SELECT min(timestamp) FROM posthog_event"
            " WHERE team_id = $1 AND timestamp >= $2 AND timestamp < $3",
            team_id,
            _from_ms(start_ms),
            _from_ms(end_ms),
        )
        return epoch_ms(first) if first is not None else None


def _json(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value or "{}")
        except ValueError:
            return {}
    return value


@dataclass(frozen=True, slots=True)
class ClickHouseSettings:
    """CLICKHOUSE_* as the original reads them; the native protocol's ports (9000, TLS 9440).
    `CLICKHOUSE_HOST` may carry a port (`host:port`)."""

    host: str
    port: int
    database: str
    user: str
    password: str
    secure: bool
    ca_file: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> ClickHouseSettings:
        host, _, port = settings.clickhouse_host.rpartition(":")
        if not host or not port.isdigit():
            host, port = settings.clickhouse_host, ""
        default = CLICKHOUSE_SECURE_PORT if settings.clickhouse_secure else CLICKHOUSE_PORT
        ca = settings.clickhouse_ca
        return cls(
            host=host.strip("[]"),
            port=int(port) if port else default,
            database=settings.clickhouse_database,
            user=settings.clickhouse_user,
            password=settings.clickhouse_password or "",
            secure=settings.clickhouse_secure,
            ca_file=os.path.join(settings.base_dir, ca) if ca else None,
        )


def _seconds_up(value_ms: int) -> int:
    """Whole seconds, rounded up; never before 1970 (ClickHouse's DateTime starts there)."""
    return max(0, -(-value_ms // 1000))


class ClickHouseEventSource:
    """Reads `events` over the native protocol, one short connection per query (a page a job:
    nothing to gain from a pool, and nothing to go stale). Also a service: it pings ClickHouse
    every 10 s and reports the result to readiness."""

    name = "clickhouse"

    def __init__(
        self, settings: ClickHouseSettings, *, ping_seconds: float = CLICKHOUSE_PING_SECONDS
    ) -> None:
        self.settings = settings
        self._ping_seconds = ping_seconds
        self._status: tuple[bool, str] = (False, "not checked yet")
        self._pinger: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def _cursor(self) -> AsyncIterator[Any]:
        s = self.settings
        options: dict[str, Any] = {}
        if s.secure:
            options["secure"] = True
            if s.ca_file:
                options["ca_certs"] = s.ca_file
        connection = Connection(
            host=s.host,
            port=s.port,
            database=s.database,
            user=s.user,
            password=s.password,
            connect_timeout=10,
            send_receive_timeout=CLICKHOUSE_TIMEOUT_SECONDS,
            **options,
        )
        async with asyncio.timeout(CLICKHOUSE_TIMEOUT_SECONDS), connection as conn, conn.cursor() as cursor:
            yield cursor

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> Sequence[tuple[Any, ...]]:
        async with self._cursor() as cursor:
            await cursor.execute(sql, params or {})
            rows: Sequence[tuple[Any, ...]] = await cursor.fetchall()
            return rows

    async def bounds(self, team_id: int) -> TimestampBounds:
        rows = await self.query(
            "SELECT toUInt64(min(_timestamp)), toUInt64(max(_timestamp)) FROM events"
            " WHERE team_id = %(team)s",
            {"team": team_id},
        )
        low, high = rows[0] if rows else (0, 0)
        # an empty set gives epoch zero, which means "none"
        return TimestampBounds(low * 1000 if low else None, high * 1000 if high else None)

    async def page(
        self, team_id: int, start_ms: int, end_ms: int, offset: int, limit: int
    ) -> list[dict[str, Any]]:
        rows = await self.query(
            """
            SELECT event, distinct_id, properties, toString(timestamp), toString(created_at)
            FROM events
            WHERE team_id = %(team)s
              AND _timestamp >= toDateTime(%(start)s) AND _timestamp < toDateTime(%(end)s)
            ORDER BY _offset, uuid
            LIMIT %(limit)s OFFSET %(offset)s
            """,
            {
                "team": team_id,
                "start": _seconds_up(start_ms),
                "end": _seconds_up(end_ms),
                "limit": limit,
                "offset": offset,
            },
        )
        now = _now()
        return [
            plugin_event(team_id, event, distinct_id, _json(properties), _ch_time(ts), _ch_time(created), now)
            for event, distinct_id, properties, ts, created in rows
        ]

    async def first_after(self, team_id: int, start_ms: int, end_ms: int) -> int | None:
        rows = await self.query(
            "SELECT count(), toUInt64(min(_timestamp)) FROM events WHERE team_id = %(team)s"
            " AND _timestamp >= toDateTime(%(start)s) AND _timestamp < toDateTime(%(end)s)",
            {"team": team_id, "start": _seconds_up(start_ms), "end": _seconds_up(end_ms)},
        )
        count, first = rows[0] if rows else (0, 0)
        return int(first) * 1000 if count else None

    # -- readiness (a service in Kafka mode)
    async def start(self) -> None:
        await self._ping()
        if not self._status[0]:
            log.warning("ClickHouse is not reachable", reason=self._status[1])
        self._pinger = asyncio.create_task(self._ping_forever(), name="clickhouse-ping")

    async def _ping(self) -> None:
        try:
            await self.query("SELECT 1")
            self._status = (True, "")
        except Exception as exc:
            self._status = (False, f"ClickHouse: {exc!r}")

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ping_seconds)
            await self._ping()

    def ready(self) -> tuple[bool, str]:
        return self._status

    async def stop(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None


def _ch_time(text: str) -> datetime:
    """ClickHouse's `YYYY-MM-DD hh:mm:ss[.ffffff]` text, in UTC as PostHog stores it."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def build_event_source(settings: Settings, pg: asyncpg.Pool) -> PostgresEventSource | ClickHouseEventSource:
    if settings.kafka_enabled:
        return ClickHouseEventSource(ClickHouseSettings.from_settings(settings))
    return PostgresEventSource(pg)
