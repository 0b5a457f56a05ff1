"""Shared fixtures: real Postgres (a fresh migrated database per test module), real Redis
(a dedicated DB number, flushed per test), a real Kafka-protocol broker, and the server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.config import Settings, load_settings
from plugin_server.db.migrate import migrate
from plugin_server.db.postgres import create_pool
from plugin_server.ingestion import kafka_messages as km
from plugin_server.plugins.pool import sandbox_threads_alive
from tests.kafka_broker import tansu_broker
from tests.kafka_topics import ensure_topics
from tests.outside_reads import OutsideReads

PG_HOST = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
PG_ROOT = f"postgres://postgres@{PG_HOST}:5432"
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "1"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
_PREFIX = f"pstest_{os.getpid()}"
_counter = itertools.count()


def _admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(f"{PG_ROOT}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated once per session; each module's database is copied from it."""
    name = f"{_PREFIX}_template"
    _admin(f'DROP DATABASE IF EXISTS "{name}"')
    asyncio.run(migrate(f"{PG_ROOT}/{name}"))
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_dsn(template_database: str) -> Iterator[str]:
    """The URL of a fresh, migrated database for this test module."""
    name = f"{_PREFIX}_{next(_counter)}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield f"{PG_ROOT}/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_TRUNCATE = """
DO $$
DECLARE tables text;
BEGIN
    SELECT string_agg(format('%I.%I', schemaname, tablename), ', ') INTO tables
    FROM pg_tables
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
      AND tablename NOT IN ('plugin_server_migrations', 'migrations');  -- job queue schema version too
    IF tables IS NOT NULL THEN
        EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY CASCADE';
    END IF;
END $$;
"""


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this module's database, with every table emptied before the test."""
    pool = await create_pool(pg_dsn, min_size=1, max_size=5)
    await pool.execute(_TRUNCATE)
    yield pool
    await pool.close()


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.aclose()


# The topics the service produces to. Made with one partition before any test runs: a
# topic the broker creates on first use gets several, and keyless messages (persons, distinct
# ids) spread over them can then be read back out of the order they were produced in.
OUTPUT_TOPICS = (
    km.TOPIC_EVENTS,
    km.TOPIC_SESSION_RECORDING_EVENTS,
    km.TOPIC_PERSON,
    km.TOPIC_PERSON_UNIQUE_ID,
    km.TOPIC_GROUPS,
    km.TOPIC_PLUGIN_LOG_ENTRIES,
    km.TOPIC_DEAD_LETTER_QUEUE,
)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with tansu_broker() as bootstrap:
        asyncio.run(ensure_topics(bootstrap, OUTPUT_TOPICS, partitions=1))
        yield bootstrap


@pytest.fixture(scope="session")
def clickhouse_host() -> Iterator[str]:
    """CLICKHOUSE_HOST of a ClickHouse server for the session: Kafka mode's readiness needs one."""
    from tests.clickhouse_server import clickhouse_server

    try:
        with clickhouse_server() as addresses:
            # the database CLICKHOUSE_DATABASE names in test mode
            asyncio.run(_clickhouse_query(addresses.plain, "CREATE DATABASE IF NOT EXISTS posthog_test"))
            yield addresses.plain
    except RuntimeError as exc:
        pytest.fail(f"ClickHouse could not be started: {exc}")


async def _clickhouse_query(address: str, sql: str) -> None:
    from asynch import Connection

    host, port = address.rsplit(":", 1)
    async with Connection(host=host, port=int(port)) as conn, conn.cursor() as cursor:
        await cursor.execute(sql)


def make_settings(pg_dsn: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": pg_dsn,
        "redis_url": REDIS_URL,
        "http_server_port": 0,
        "worker_concurrency": 2,
        "log_level": "warn",
        "disable_mmdb": True,
        "shutdown_timeout_seconds": 15.0,
    }
    base.update(overrides)
    return load_settings({"NODE_ENV": "test"}, **base)


@pytest.fixture
def settings(pg_dsn: str) -> Settings:
    return make_settings(pg_dsn)


@pytest.fixture
def settings_factory(pg_dsn: str) -> Callable[..., Settings]:
    return lambda **overrides: make_settings(pg_dsn, **overrides)


@pytest.fixture
def run_server() -> Callable[[Settings], contextlib.AbstractAsyncContextManager[Any]]:
    """`async with run_server(settings) as server:` runs the real server in this event loop."""
    from plugin_server.app import Server

    @contextlib.asynccontextmanager
    async def running(settings: Settings) -> AsyncIterator[Server]:
        server = Server(settings, handle_signals=False)
        await server.startup()
        try:
            yield server
        finally:
            await server.shutdown()

    return running


_exit_status = 0
OUTSIDE_READS = OutsideReads()
sys.addaudithook(OUTSIDE_READS.audit)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    if OUTSIDE_READS.paths:
        # A test read a file beside the checkout, which a fresh clone does not have.
        names = sorted(set(OUTSIDE_READS.paths))
        sys.stderr.write("\nfiles read outside the repository:\n  " + "\n  ".join(names) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _exit_status = int(session.exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # A test that abandoned a sandbox stuck inside C code leaves its thread running, and the
    # interpreter's exit would wait for it (as `python -m plugin_server` does, leave without).
    if sandbox_threads_alive():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
