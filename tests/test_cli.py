"""The command line as a user runs it (spec/services.md §1.1, §2.3, §2.4)."""

from __future__ import annotations

import signal
import time

import pytest
import redis.asyncio as aioredis

from plugin_server.services.status import PING_KEY
from plugin_server.version import VERSION
from tests.conftest import REDIS_URL
from tests.kafka_broker import free_port
from tests.server_process import http_get, run_cli, server_env, server_process, wait_ready
from tests.test_config import spec_variables


def test_version() -> None:
    result = run_cli("--version", env=server_env())
    assert result.returncode == 0
    assert result.stdout.strip() == VERSION


def test_help_lists_every_variable_with_default() -> None:
    result = run_cli("--help", env=server_env())
    assert result.returncode == 0
    for name in spec_variables():
        line = next((ln for ln in result.stdout.splitlines() if ln.split()[:1] == [name]), None)
        assert line is not None, name
        assert " default " in line
    assert "HTTP_SERVER_PORT" in result.stdout and "6738" in result.stdout


def test_bad_setting_exits_2_naming_it() -> None:
    result = run_cli(env=server_env(KAFKA_ENABLED="maybe"))
    assert result.returncode == 2
    assert "KAFKA_ENABLED" in result.stderr and "maybe" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_database_exits_2() -> None:
    result = run_cli(env=server_env())
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr


async def test_healthcheck_follows_the_ping_key(redis: aioredis.Redis) -> None:
    env = server_env(REDIS_URL=REDIS_URL)
    assert run_cli("--healthcheck", env=env).returncode == 1
    await redis.set(PING_KEY, "2026-01-01T00:00:00.000Z", ex=60)
    result = run_cli("--healthcheck", env=env)
    assert result.returncode == 0
    assert "found with value" in result.stderr


def test_healthcheck_with_redis_down_exits_1_quickly() -> None:
    started = time.monotonic()
    result = run_cli("--healthcheck", env=server_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}"))
    assert result.returncode == 1
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("how", ["flag", "env"])
def test_idle_serves_probes_and_touches_nothing(how: str) -> None:
    port = free_port()
    env = server_env(HTTP_SERVER_PORT=str(port), REDIS_URL="redis://127.0.0.1:1")
    args: tuple[str, ...] = ("--idle",)
    if how == "env":
        env["PLUGIN_SERVER_IDLE"] = "true"
        args = ()
    with server_process(env, *args) as process:
        wait_ready(process, port)
        assert http_get(port, "/healthz")[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert b"Disengaging" in process.stderr.read()  # type: ignore[union-attr]
