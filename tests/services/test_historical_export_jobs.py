"""The historical export's job chain against real Postgres, its jobs run by the test: duplicate
deliveries, a crash between moving on and enqueueing, retries running out, a stalled export."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from plugin_server.plugins.capabilities import save_public_jobs
from plugin_server.plugins.registry import fetch_plugin_configs
from plugin_server.services.event_sources import PostgresEventSource
from plugin_server.services.historical_export import (
    MAX_RETRIES,
    PAGE_JOB,
    START_JOB,
    HistoricalExport,
)
from plugin_server.services.plugin_host import PluginCallError, PluginConfigRef
from tests.factories import TEAM_ID, create_plugin, create_plugin_config, create_team
from tests.services.historical_export_helpers import START, export_running, store_events

REF = PluginConfigRef(id=39, team_id=TEAM_ID, plugin_id=60, plugin_name="exporter")


class Host:
    """The plugin side: exportEvents failing as told, the plugin log, recorded errors."""

    def __init__(self) -> None:
        self.exported: list[int] = []
        self.fail_with: PluginCallError | None = None
        self.logs: list[str] = []
        self.errors: list[PluginCallError] = []

    def config_ref(self, plugin_config_id: int) -> PluginConfigRef | None:
        return REF

    async def export_events(self, plugin_config_id: int, events: Sequence[dict[str, Any]]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.exported += [e["properties"]["seq"] for e in events]

    async def record_error(self, plugin_config_id: int, error: PluginCallError) -> None:
        self.errors.append(error)

    def write_log(self, plugin_config_id: int, message: str) -> None:
        self.logs.append(message)


class Queue:
    """Jobs as the job queue would hold them; `broken` makes the next enqueue fail."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, dict[str, Any], int]] = []
        self.broken = False

    async def enqueue(
        self, ref: PluginConfigRef, job_type: str, payload: dict[str, Any], run_at: int
    ) -> None:
        if self.broken:
            self.broken = False
            raise ConnectionError("job queue down")
        self.jobs.append((job_type, payload, run_at))

    def metric(self, ref: PluginConfigRef, name: str, value: float) -> None:
        pass


@pytest.fixture
async def setup(pg: asyncpg.Pool) -> tuple[HistoricalExport, Host, Queue]:
    await create_team(pg)
    await create_plugin(pg, plugin_id=60)
    await create_plugin_config(pg, config_id=39, plugin_id=60)
    host, queue = Host(), Queue()
    export = HistoricalExport(
        pg, PostgresEventSource(pg), host, queue.enqueue, queue.metric, instance_id="i-1"
    )
    return export, host, queue


async def drain(export: HistoricalExport, queue: Queue, *, limit: int = 1000) -> int:
    """Run queued jobs in order (ignoring when they are due) until none is left."""
    ran = 0
    while queue.jobs and ran < limit:
        job_type, payload, _run_at = queue.jobs.pop(0)
        await export.run_job(REF.id, job_type, payload)
        ran += 1
    return ran


async def test_a_page_job_delivered_twice_exports_its_page_once(
    pg: asyncpg.Pool, setup: tuple[HistoricalExport, Host, Queue]
) -> None:
    export, host, queue = setup
    times = [START + timedelta(seconds=s) for s in range(250)]
    stored = await store_events(pg, times)
    await export.run_job(REF.id, START_JOB, {})
    first = queue.jobs[0]
    await export.run_job(REF.id, *first[:2])  # delivered ...
    await export.run_job(REF.id, *first[:2])  # ... and again (its server died before completing it)
    await drain(export, queue)
    assert sorted(host.exported) == sorted(stored)
    assert not await export_running(pg)


async def test_a_crash_between_moving_on_and_enqueueing_loses_no_page(
    pg: asyncpg.Pool, setup: tuple[HistoricalExport, Host, Queue]
) -> None:
    export, host, queue = setup
    stored = await store_events(pg, [START + timedelta(seconds=s) for s in range(250)])
    await export.run_job(REF.id, START_JOB, {})
    job = queue.jobs.pop(0)
    queue.broken = True
    with pytest.raises(ConnectionError):
        await export.run_job(REF.id, *job[:2])  # page exported and moved on; its successor not queued
    assert queue.jobs == []
    await export.run_job(REF.id, *job[:2])  # the job queue runs the failed job again
    assert len(queue.jobs) == 1  # ... which queues the successor instead of exporting again
    await drain(export, queue)
    assert sorted(host.exported) == sorted(stored)


async def test_retries_back_off_and_a_page_is_skipped_after_15(
    pg: asyncpg.Pool, setup: tuple[HistoricalExport, Host, Queue]
) -> None:
    export, host, queue = setup
    await store_events(pg, [START, START + timedelta(minutes=30)])
    host.fail_with = PluginCallError("RetryError", "asleep", retry=True)
    await export.run_job(REF.id, START_JOB, {})
    delays = []
    for _ in range(MAX_RETRIES):
        job_type, payload, _due = queue.jobs.pop(0)
        before = queue_time()
        await export.run_job(REF.id, job_type, payload)
        delays.append(round((queue.jobs[-1][2] - before) / 1000))
    assert delays == [3 * 2**n for n in range(MAX_RETRIES)]
    host.fail_with = None
    job_type, payload, _due = queue.jobs.pop(0)
    assert payload["retriesPerformedSoFar"] == MAX_RETRIES
    host.fail_with = PluginCallError("RetryError", "still asleep", retry=True)
    await export.run_job(REF.id, job_type, payload)  # the 15th retry fails too: skipped
    host.fail_with = None
    await drain(export, queue)
    assert host.exported == [1]  # the first page was given up on; the export went on
    assert any("after 15 retries" in line and "Skipping these events." in line for line in host.logs)
    assert not await export_running(pg)


async def test_other_errors_are_recorded_and_the_export_goes_on(
    pg: asyncpg.Pool, setup: tuple[HistoricalExport, Host, Queue]
) -> None:
    export, host, queue = setup
    await store_events(pg, [START, START + timedelta(minutes=30)])
    host.fail_with = PluginCallError("TypeError", "oops")
    await export.run_job(REF.id, START_JOB, {})
    await export.run_job(REF.id, *queue.jobs.pop(0)[:2])
    host.fail_with = None
    await drain(export, queue)
    assert host.exported == [1] and [e.message for e in host.errors] == ["oops"]
    assert any("Failed processing events 0-100" in line and "oops. Skipped." in line for line in host.logs)


async def test_a_stalled_export_is_resumed_by_a_new_request(
    pg: asyncpg.Pool, setup: tuple[HistoricalExport, Host, Queue]
) -> None:
    export, host, queue = setup
    stored = await store_events(pg, [START + timedelta(minutes=m) for m in range(0, 120, 7)])
    await export.run_job(REF.id, START_JOB, {})
    await export.run_job(REF.id, *queue.jobs.pop(0)[:2])
    queue.jobs.clear()  # the next page's job is lost (its config was off for too long)
    await export.run_job(REF.id, START_JOB, {})
    assert queue.jobs == [] and "An export is already running" in host.logs[-1]
    # an hour after the page was due, a request resumes the export
    value = await pg.fetchval("SELECT value FROM posthog_pluginstorage WHERE key = 'export_page'")
    await pg.execute(
        "UPDATE posthog_pluginstorage SET value = $1 WHERE key = 'export_page'",
        json.dumps({**json.loads(value), "due": queue_time() - 3_700_000}),
    )
    await export.run_job(REF.id, START_JOB, {"dateFrom": "2000-01-01T00:00:00Z"})
    assert "An export had stalled" in host.logs[-1] and len(queue.jobs) == 1
    await drain(export, queue)
    assert sorted(host.exported) == sorted(stored)


async def test_jobs_of_a_finished_or_unknown_export_do_nothing(
    pg: asyncpg.Pool, setup: tuple[HistoricalExport, Host, Queue]
) -> None:
    export, host, queue = setup
    await store_events(pg, [START])
    await export.run_job(REF.id, PAGE_JOB, {"retriesPerformedSoFar": 0, "incrementTimestampCursor": True})
    assert queue.jobs == [] and host.exported == []
    await export.run_job(REF.id, START_JOB, {})
    job = queue.jobs[0]
    await drain(export, queue)
    await export.run_job(REF.id, *job[:2])  # late duplicate after the end
    assert host.exported == [0] and queue.jobs == []


def queue_time() -> int:
    return int(time.time() * 1000)


async def test_the_run_button_is_added_once_and_a_declared_one_kept(pg: asyncpg.Pool) -> None:
    await create_team(pg)
    declared = {"Export historical events": {"dateFrom": {"type": "date"}}, "other": {}}
    await create_plugin(pg, plugin_id=60, public_jobs=declared)
    await create_plugin(pg, plugin_id=61, name="plain")
    await create_plugin(pg, plugin_id=62, name="no export")
    for plugin_id in (60, 61, 62):
        await create_plugin_config(pg, config_id=plugin_id, plugin_id=plugin_id)
    plugins = (await fetch_plugin_configs(pg)).plugins
    exporting = {"methods": ["export_events"]}
    assert not await save_public_jobs(pg, plugins[60], exporting)
    assert await save_public_jobs(pg, plugins[61], exporting)
    assert not await save_public_jobs(pg, plugins[61], exporting)  # known now: no second write
    assert not await save_public_jobs(pg, plugins[62], {"methods": ["process_event"]})
    rows = dict(await pg.fetch("SELECT id, public_jobs FROM posthog_plugin ORDER BY id"))
    assert rows[60] == declared
    assert rows[61] == {"Export historical events": {}}
    assert rows[62] in (None, {})
