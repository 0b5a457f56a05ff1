"""`--migrate`: idempotent, safe when two instances run it at once, and compatible with a
database the PostHog app made (tests/fixtures/posthog.sql)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from plugin_server.db.migrate import load_migrations
from tests.conftest import PG_ROOT, REDIS_URL, _admin
from tests.fixtures import FIXTURES
from tests.kafka_broker import free_port
from tests.server_process import ROOT, server_env, server_process, wait_ready

POSTHOG_SQL = FIXTURES / "posthog.sql"


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"pstest_empty_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_parallel_migrations_on_an_empty_database(empty_database: str) -> None:
    dsn = f"{PG_ROOT}/{empty_database}"
    env = server_env(DATABASE_URL=dsn)
    cmd = [sys.executable, "-m", "plugin_server", "--migrate"]
    runs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE) for _ in range(2)]
    codes = [p.wait(timeout=60) for p in runs]
    assert codes == [0, 0], [p.stderr.read() for p in runs]  # type: ignore[union-attr]

    async def applied() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return [
                r["name"] for r in await conn.fetch("SELECT name FROM plugin_server_migrations ORDER BY name")
            ]
        finally:
            await conn.close()

    import asyncio

    assert asyncio.run(applied()) == [m.name for m in load_migrations()]
    # and the server then starts on it
    port = free_port()
    with server_process(
        server_env(DATABASE_URL=dsn, REDIS_URL=REDIS_URL, HTTP_SERVER_PORT=str(port))
    ) as process:
        wait_ready(process, port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_service_runs_on_a_database_made_by_posthog(empty_database: str) -> None:
    _admin(f'CREATE DATABASE "{empty_database}"')
    dsn = f"{PG_ROOT}/{empty_database}"
    made = subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(POSTHOG_SQL)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    env = server_env(DATABASE_URL=dsn, REDIS_URL=REDIS_URL)
    first = subprocess.run(
        [sys.executable, "-m", "plugin_server", "--migrate"], env=env, cwd=ROOT, timeout=60
    )
    assert first.returncode == 0
    port = free_port()
    with server_process({**env, "HTTP_SERVER_PORT": str(port)}) as process:
        wait_ready(process, port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_migration_files_are_numbered_and_unique() -> None:
    names = [m.name for m in load_migrations()]
    numbers = [n.split("_", 1)[0] for n in names]
    assert len(numbers) == len(set(numbers)), names
    assert names == sorted(names)
    assert all(
        Path(__file__).parent.parent.joinpath("plugin_server/db/migrations", f"{n}.sql").exists()
        for n in names
    )
