"""A historical export goes on after the server restarts (its state is in plugin storage, its
next page in the job queue): `python -m plugin_server` stopped mid-export and started again."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import asyncpg
import pytest

from plugin_server.services.historical_export import PAGE_SIZE
from tests.conftest import REDIS_URL
from tests.factories import create_team
from tests.integration.conftest import wait_until
from tests.kafka_broker import free_port
from tests.server_process import http_get, server_env, server_process
from tests.services.historical_export_helpers import (
    EVENT_COUNT,
    Warehouse,
    add_exporter,
    export_running,
    spread_times,
    start_export,
    store_events,
)
from tests.services.http_server import local_server


async def wait_ready(process: subprocess.Popen[bytes], port: int, within: float = 60.0) -> None:
    """Like server_process.wait_ready, without blocking the loop the test's HTTP server runs on."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        try:
            status, _body = await asyncio.to_thread(http_get, port, "/_ready")
        except OSError:
            status = 0
        if status == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("server did not become ready")


async def stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> int:
    process.send_signal(sig)
    return await asyncio.to_thread(process.wait, 60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_an_export_interrupted_by_a_restart_completes_after_it(
    pg: asyncpg.Pool, pg_dsn: str, sig: signal.Signals
) -> None:
    await create_team(pg)
    stored = await store_events(pg, spread_times(EVENT_COUNT))
    warehouse = Warehouse(failures=0, delay=0.02)
    port = free_port()
    env = server_env(
        DATABASE_URL=pg_dsn,
        REDIS_URL=REDIS_URL,
        HTTP_SERVER_PORT=str(port),
        PLUGIN_FETCH_ALLOW_PRIVATE="true",
        DISABLE_MMDB="true",
        LOG_LEVEL="error",
        # a killed server's job-queue lock is free again after this
        SCHEDULE_LOCK_TTL="3",
    )
    async with local_server(warehouse.handle) as http:
        await add_exporter(pg, "python", http.url)
        with server_process(env) as first:
            await wait_ready(first, port)
            await start_export(pg_dsn)
            await wait_until(lambda: _received(warehouse, 600), within=120)
            code = await stop(first, sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        halfway = len(warehouse.received)
        assert halfway < EVENT_COUNT and await export_running(pg)
        with server_process(env) as second:
            await wait_ready(second, port)
            await wait_until(lambda: _done(pg, warehouse), within=240)
            assert await stop(second, signal.SIGTERM) == 0
    counts = warehouse.counts()
    assert set(counts) == set(stored)
    if sig == signal.SIGTERM:
        # a graceful stop lets the page in flight finish: nothing is sent twice
        assert max(counts.values()) == 1
    else:
        # killed mid-page: that page may be sent again (at least once), nothing else
        assert sum(counts.values()) - len(counts) <= PAGE_SIZE


async def _received(warehouse: Warehouse, count: int) -> bool:
    return len(warehouse.received) >= count


async def _done(pg: asyncpg.Pool, warehouse: Warehouse) -> bool:
    return len(warehouse.counts()) >= EVENT_COUNT and not await export_running(pg)
