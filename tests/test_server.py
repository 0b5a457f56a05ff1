"""Server lifecycle, probes and signals (spec/services.md §1.4, §1.7, §10.1)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.services.status import JOB_QUEUES_KEY, PING_KEY, VERSION_KEY
from plugin_server.version import VERSION
from tests.conftest import REDIS_URL
from tests.kafka_broker import free_port
from tests.server_process import ROOT, server_env, server_process, wait_ready


async def test_9_1_1_start_and_stop(
    settings_factory: Callable[..., Settings], run_server: Any, redis: aioredis.Redis
) -> None:
    settings = settings_factory(http_server_port=free_port())
    async with run_server(settings) as server:
        assert server.ready
        assert (await redis.get(VERSION_KEY)) == VERSION.encode()
        ping = (await redis.get(PING_KEY)).decode()
        assert ping.endswith("Z") and len(ping) == len("2026-01-01T00:00:00.000Z")
        assert 0 < await redis.ttl(PING_KEY) <= 60
        assert json.loads(await redis.get(JOB_QUEUES_KEY)) == "graphile"
        async with aiohttp.ClientSession() as http:
            port = settings.http_server_port
            async with http.get(f"http://127.0.0.1:{port}/_ready") as response:
                assert response.status == 200
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert (await response.json())["status"] == "ready"
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
                assert "process_cpu_seconds_total" in text
                assert f'plugin_server_info{{instance_id="{server.instance_id}",version="{VERSION}"}}' in text
    assert not server.ready


async def test_readiness_reports_a_dependency_down(
    settings_factory: Callable[..., Settings], run_server: Any
) -> None:
    settings = settings_factory(http_server_port=free_port())
    async with run_server(settings) as server:
        assert await server.readiness() == {}
        # Postgres unreachable from the server's side (terminate: close() would wait for the
        # connection the job-queue consumer keeps)
        server.ctx.postgres.terminate()
        server._readiness_cache = None
        failing = await server.readiness()
        assert "postgres" in failing
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{settings.http_server_port}/_ready") as response,
        ):
            assert response.status == 503
            assert "postgres" in (await response.json())["failing"]


def test_sigterm_exits_0_within_drain_time(pg_dsn: str) -> None:
    port = free_port()
    env = server_env(
        DATABASE_URL=pg_dsn, REDIS_URL=REDIS_URL, HTTP_SERVER_PORT=str(port), SHUTDOWN_TIMEOUT_SECONDS="10"
    )
    with server_process(env) as process:
        wait_ready(process, port)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        logs = process.stderr.read().decode()  # type: ignore[union-attr]
        assert "All systems go" in logs and "Over and out" in logs


def test_second_signal_exits_at_once(pg_dsn: str) -> None:
    port = free_port()
    env = server_env(DATABASE_URL=pg_dsn, REDIS_URL=REDIS_URL, HTTP_SERVER_PORT=str(port))
    with server_process(env) as process:
        wait_ready(process, port)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=10)
        assert code in (0, 128 + signal.SIGINT)


def test_startup_failure_exits_1(pg_dsn: str) -> None:
    env = server_env(DATABASE_URL=pg_dsn, REDIS_URL=f"redis://127.0.0.1:{free_port()}", HTTP_SERVER_PORT="0")
    with server_process(env) as process:
        assert process.wait(timeout=30) == 1
        assert "Launchpad failure" in process.stderr.read().decode()  # type: ignore[union-attr]


async def test_9_1_2_staleness_stops_the_server_non_zero(
    settings_factory: Callable[..., Settings], run_server: Any
) -> None:
    settings = settings_factory(staleness_restart_seconds=1)
    async with run_server(settings) as server:
        # nothing is ingested: within a few seconds the watchdog asks for a non-zero stop
        for _ in range(50):
            if server._stop_requested.is_set():
                break
            await asyncio.sleep(0.1)
        assert server._stop_requested.is_set()
        assert server._exit_code == 1
        assert not server.alive()


async def test_activity_keeps_the_watchdog_quiet(
    settings_factory: Callable[..., Settings], run_server: Any
) -> None:
    settings = settings_factory(staleness_restart_seconds=1)
    async with run_server(settings) as server:
        for _ in range(25):
            server.ctx.activity.touch("processEvent")
            await asyncio.sleep(0.1)
        assert not server._stop_requested.is_set()


def test_a_server_process_tunes_the_garbage_collector(pg_dsn: str) -> None:
    """The server freezes what start-up built and collects young objects less often; a server
    embedded in another program (handle_signals=False, as in these tests) leaves the GC alone."""
    script = (
        "import asyncio, gc, sys\n"
        "from plugin_server.app import Server\n"
        "from plugin_server.config import load_settings\n"
        "from plugin_server.gc_tuning import YOUNG_THRESHOLD\n"
        "async def main():\n"
        "    for owns_process in (False, True):\n"
        "        server = Server(load_settings(), handle_signals=owns_process)\n"
        "        await server.startup()\n"
        "        print('GC', gc.get_threshold()[0] == YOUNG_THRESHOLD, gc.get_freeze_count() > 10_000)\n"
        "        await server.shutdown()\n"
        "asyncio.run(main())\n"
    )
    env = server_env(DATABASE_URL=pg_dsn, REDIS_URL=REDIS_URL, HTTP_SERVER_PORT="0")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    tuned = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("GC ")]
    assert tuned == [["False", "False"], ["True", "True"]]
