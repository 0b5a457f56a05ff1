"""Historical export in Postgres mode (plugins §3.9), through the real server: Python and JS
plugins, RetryError retries, dateFrom/dateTo, the run button, and refusals."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from plugin_server.config import Settings
from plugin_server.services.event_sources import TimestampBounds, iso_ms
from plugin_server.services.historical_export import (
    InvalidExportRequest,
    export_range,
    progress_bar,
    progress_cells,
)
from tests.factories import create_team
from tests.integration.conftest import wait_until
from tests.services.historical_export_helpers import (
    CONFIG_ID,
    EVENT_COUNT,
    START,
    Warehouse,
    add_exporter,
    export_running,
    plugin_logs,
    spread_times,
    start_export,
    store_events,
)
from tests.services.http_server import local_server

OTHER_TEAM = 3


@pytest.fixture
def export_settings(settings: Settings) -> Settings:
    return settings.replace(plugin_fetch_allow_private=True)


async def _done(pg: asyncpg.Pool, warehouse: Warehouse, expected: int) -> bool:
    return len(warehouse.received) >= expected and not await export_running(pg)


@pytest.mark.parametrize("language", ["python", "js"])
async def test_every_stored_event_is_exported_once_despite_retry_errors(
    pg: asyncpg.Pool, pg_dsn: str, export_settings: Settings, run_server: Any, language: str
) -> None:
    await create_team(pg)
    await create_team(pg, OTHER_TEAM)
    stored = await store_events(pg, spread_times(EVENT_COUNT))
    await store_events(pg, spread_times(40, seed=3), team_id=OTHER_TEAM, first_seq=10_000)
    warehouse = Warehouse(failures=2)
    async with local_server(warehouse.handle) as http:
        await add_exporter(pg, language, http.url)
        async with run_server(export_settings):
            await start_export(pg_dsn)
            await wait_until(lambda: _done(pg, warehouse, EVENT_COUNT), within=240)
    counts = warehouse.counts()
    assert set(counts) == set(stored)  # every event of the team, none of the other team's
    assert max(counts.values()) == 1  # none twice, though the first pages were retried
    assert warehouse.refused == 2
    assert {seq: ts for seq, ts, _name in warehouse.received} == {
        seq: iso_ms(moment) for seq, moment in stored.items()
    }
    logs = await plugin_logs(pg)
    assert all(re.match(r"^\([0-9a-f-]{36}\) ", line) for line in logs if "export" in line.lower())
    assert any(line.endswith("Retrying in 3s") for line in logs)
    assert any(line.endswith("Retrying in 6s") for line in logs)
    assert any("Successfully processed events 0-100 from 2021-10-01T00:00:00.000Z" in line for line in logs)
    assert any("Successfully processed events 400-500" in line for line in logs)  # the burst's pages
    export_logs = [line for line in logs if line.startswith("(")]
    assert export_logs[-1].endswith("Done exporting all events")
    bars = [re.search(r"Export progress: [■□]{20} (\d+)%", line) for line in logs]
    percents = {int(m.group(1)) for m in bars if m}
    assert {0, 100} <= percents and len(percents) >= 10
    public_jobs = await pg.fetchval("SELECT public_jobs FROM posthog_plugin WHERE id = 60")
    assert public_jobs == {"Export historical events": {}}
    assert await pg.fetchval("SELECT error FROM posthog_pluginconfig WHERE id = $1", CONFIG_ID) is None


async def test_date_from_and_date_to_are_honoured(
    pg: asyncpg.Pool, pg_dsn: str, export_settings: Settings, run_server: Any
) -> None:
    await create_team(pg)
    date_from, date_to = START + timedelta(days=1), START + timedelta(days=1, hours=6)
    edges = [date_from - timedelta(milliseconds=1), date_from, date_to, date_to + timedelta(milliseconds=1)]
    stored = await store_events(pg, sorted(spread_times(EVENT_COUNT - 4) + edges))
    wanted = {seq for seq, moment in stored.items() if date_from <= moment <= date_to}
    warehouse = Warehouse(failures=0)
    async with local_server(warehouse.handle) as http:
        await add_exporter(pg, "python", http.url)
        async with run_server(export_settings):
            await start_export(pg_dsn, {"dateFrom": iso_ms(date_from), "dateTo": "2021-10-02T06:00:00Z"})
            await wait_until(lambda: _done(pg, warehouse, len(wanted)), within=120)
    assert sorted(warehouse.counts().elements()) == sorted(wanted)
    storage = dict(
        await pg.fetch("SELECT key, value FROM posthog_pluginstorage WHERE plugin_config_id = $1", CONFIG_ID)
    )
    assert storage["min_timestamp"] == str(int(date_from.timestamp() * 1000))
    assert storage["max_timestamp"] == str(int(date_to.timestamp() * 1000))
    assert "is_export_running" not in storage


async def test_missing_and_invalid_dates_are_refused_with_a_clear_error(
    pg: asyncpg.Pool, pg_dsn: str, export_settings: Settings, run_server: Any
) -> None:
    await create_team(pg)  # no events: no bounds to default to
    warehouse = Warehouse(failures=0)
    async with local_server(warehouse.handle) as http:
        await add_exporter(pg, "js", http.url)
        async with run_server(export_settings):
            await start_export(pg_dsn)
            lower = "Unable to determine the lower timestamp bound for the export automatically."
            await wait_until(lambda: _logged(pg, lower))
            await start_export(pg_dsn, {"dateFrom": "2021-10-01T00:00:00Z"})
            await wait_until(lambda: _logged(pg, "Please specify a 'dateTo' value."))
            await start_export(pg_dsn, {"dateFrom": "yesterday", "dateTo": "2021-10-01T00:00:00Z"})
            await wait_until(lambda: _logged(pg, "'dateFrom' should be an timestamp in ISO string format."))
            # refused requests claim nothing: a valid one runs
            await start_export(pg_dsn, {"dateFrom": "2021-10-01T00:00:00Z", "dateTo": "2021-10-01T01:00:00Z"})
            await wait_until(lambda: _logged(pg, "Done exporting all events"))
    error = await pg.fetchval("SELECT error FROM posthog_pluginconfig WHERE id = $1", CONFIG_ID)
    assert "'dateFrom' should be an timestamp in ISO string format." in str(error)
    assert warehouse.received == []


async def test_a_request_while_an_export_runs_is_logged_and_ignored(
    pg: asyncpg.Pool, pg_dsn: str, export_settings: Settings, run_server: Any
) -> None:
    await create_team(pg)
    stored = await store_events(pg, spread_times(600, days=1))
    warehouse = Warehouse(failures=0, delay=0.05)
    async with local_server(warehouse.handle) as http:
        await add_exporter(pg, "python", http.url)
        async with run_server(export_settings):
            await start_export(pg_dsn)
            await wait_until(lambda: _received(warehouse, 1))
            await start_export(pg_dsn, {"dateFrom": "2021-10-01T00:00:00Z"})
            await wait_until(lambda: _logged(pg, "An export is already running"))
            await wait_until(lambda: _done(pg, warehouse, len(stored)), within=120)
    assert sorted(warehouse.counts().elements()) == sorted(stored)


async def _logged(pg: asyncpg.Pool, text: str) -> bool:
    return any(text in line for line in await plugin_logs(pg))


async def _received(warehouse: Warehouse, count: int) -> bool:
    return len(warehouse.received) >= count


def test_export_range_defaults_to_the_bounds_at_setup() -> None:
    bounds = TimestampBounds(1_000, 9_000)
    assert export_range({}, bounds) == (1_000, 9_000)
    assert export_range(None, bounds) == (1_000, 9_000)
    assert export_range({"dateFrom": "1970-01-01T00:00:02Z"}, bounds) == (2_000, 9_000)
    assert export_range({"dateTo": "1970-01-01T00:00:02.5+00:00"}, bounds) == (1_000, 2_500)
    assert export_range({"dateFrom": "1970-01-01T00:00:03"}, bounds)[0] == 3_000  # no zone: UTC
    with pytest.raises(InvalidExportRequest, match="'dateTo' should be an timestamp"):
        export_range({"dateTo": "soon"}, bounds)
    with pytest.raises(InvalidExportRequest, match="'dateTo' is before 'dateFrom'"):
        export_range({"dateFrom": "1970-01-01T00:00:05Z", "dateTo": "1970-01-01T00:00:04Z"}, bounds)
    with pytest.raises(InvalidExportRequest, match="lower timestamp bound"):
        export_range({}, TimestampBounds(None, None))


def test_progress_bar_shows_the_share_done() -> None:
    first, last = 0, 999
    assert [progress_cells(c, first, last) for c in (0, 250, 500, 999, 1000)] == [0, 5, 10, 19, 20]
    assert progress_bar(5) == "Export progress: ■■■■■□□□□□□□□□□□□□□□ 25%"
    assert progress_cells(5, 5, 5) == 0 and progress_cells(6, 5, 5) == 20  # one-moment range


def test_iso_ms_is_javascript_to_iso_string() -> None:
    assert iso_ms(datetime(2021, 10, 1, 0, 0, 0, 123456, tzinfo=UTC)) == "2021-10-01T00:00:00.123Z"
