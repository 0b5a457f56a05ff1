"""Historical export in Kafka mode: events read from ClickHouse's `events` table over the native
protocol (asynch), against a real ClickHouse server this module starts (tests/clickhouse_server.py).

Debian's ClickHouse (18.16) has no DateTime64, so the table has PostHog's columns with DateTime
times; the reads use only what both versions have."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from plugin_server.config import Settings, load_settings
from plugin_server.services.event_sources import ClickHouseEventSource, ClickHouseSettings, iso_ms
from tests.clickhouse_server import ClickHouseAddresses, clickhouse_server
from tests.factories import TEAM_ID, create_team
from tests.integration.conftest import wait_until
from tests.kafka_topics import ensure_topics
from tests.services.historical_export_helpers import (
    EVENT_COUNT,
    START,
    Warehouse,
    add_exporter,
    export_running,
    spread_times,
    start_export,
)
from tests.services.http_server import local_server

EVENTS_TABLE = """
CREATE TABLE {database}.events (
    uuid UUID,
    event String,
    properties String,
    timestamp DateTime,
    team_id Int64,
    distinct_id String,
    elements_hash String,
    created_at DateTime,
    _timestamp DateTime,
    _offset UInt64,
    elements_chain String
) ENGINE = ReplacingMergeTree(_timestamp)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (team_id, toDate(timestamp), distinct_id, uuid)
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for 127.0.0.1 it signed (openssl)."""
    cwd = tmp_path_factory.mktemp("clickhouse-tls")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem", cwd=cwd,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr", cwd=cwd,
    )  # fmt: skip
    (cwd / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.cnf", "-out", "server.pem", cwd=cwd,
    )  # fmt: skip
    return cwd


@pytest.fixture(scope="module")
def clickhouse_addresses(certificates: Path) -> Iterator[ClickHouseAddresses]:
    certificate = (certificates / "server.pem", certificates / "server.key")
    try:
        with clickhouse_server(certificate=certificate) as addresses:
            yield addresses
    except RuntimeError as exc:
        pytest.fail(f"ClickHouse could not be started: {exc}")


@pytest.fixture
def clickhouse_address(clickhouse_addresses: ClickHouseAddresses) -> str:
    return clickhouse_addresses.plain


@pytest.fixture
async def clickhouse(clickhouse_address: str, settings: Settings) -> AsyncIterator[ClickHouseEventSource]:
    """A source on a fresh database holding an empty `events` table."""
    database = f"posthog_test_{uuid.uuid4().hex[:10]}"
    admin = ClickHouseEventSource(
        ClickHouseSettings.from_settings(
            settings.replace(clickhouse_host=clickhouse_address, clickhouse_database="default")
        )
    )
    await admin.query(f"CREATE DATABASE {database}")
    await admin.query(EVENTS_TABLE.format(database=database))
    source = ClickHouseEventSource(
        ClickHouseSettings.from_settings(
            settings.replace(clickhouse_host=clickhouse_address, clickhouse_database=database)
        )
    )
    yield source
    await admin.query(f"DROP DATABASE {database}")


async def insert_events(
    source: ClickHouseEventSource, times: list[datetime], *, team_id: int = TEAM_ID, first_seq: int = 0
) -> dict[int, datetime]:
    """Rows as ClickHouse stores what it consumed: `_timestamp` the (whole-second) time it was
    ingested, `_offset` the Kafka offset. {seq: timestamp}."""
    stored: dict[int, datetime] = {}
    rows = []
    for seq, moment in enumerate(times, start=first_seq):
        stored[seq] = moment.replace(microsecond=0)
        second = stored[seq].replace(tzinfo=None)  # the server's time zone is UTC
        properties = f'{{"seq": {seq}, "$ip": "1.2.3.4"}}'
        name, user = f"event {seq % 7}", f"user-{seq % 50}"
        rows.append((uuid.uuid4(), name, properties, second, team_id, user, "", second, second, seq, ""))
    async with source._cursor() as cursor:
        await cursor.execute("INSERT INTO events VALUES", rows)
    return stored


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def test_the_clickhouse_source_reads_bounds_pages_and_gaps(clickhouse: ClickHouseEventSource) -> None:
    assert (await clickhouse.bounds(TEAM_ID)).min_ms is None  # epoch zero means none
    times = [START + timedelta(seconds=s) for s in (0, 1, 1, 2, 3600)]
    await insert_events(clickhouse, times)
    await insert_events(clickhouse, [START], team_id=TEAM_ID + 1, first_seq=100)
    bounds = await clickhouse.bounds(TEAM_ID)
    assert (bounds.min_ms, bounds.max_ms) == (ms(START), ms(START) + 3_600_000)
    # ms ends are rounded up to the second: [00.000, 01.500) holds seconds 0 and 1 ...
    first = await clickhouse.page(TEAM_ID, ms(START), ms(START) + 1500, 0, 100)
    assert [e["properties"]["seq"] for e in first] == [0, 1, 2]
    # ... and [01.500, 02.000) none, so adjacent intervals never share a second
    assert await clickhouse.page(TEAM_ID, ms(START) + 1500, ms(START) + 2000, 0, 100) == []
    paged = await clickhouse.page(TEAM_ID, ms(START), ms(START) + 10_000, 1, 2)
    assert [e["properties"]["seq"] for e in paged] == [1, 2]  # _offset order
    event = paged[0]
    assert event["timestamp"] == "2021-10-01T00:00:01.000Z" and event["sent_at"] == event["timestamp"]
    assert (event["team_id"], event["ip"], event["site_url"]) == (TEAM_ID, "1.2.3.4", "")
    assert (
        await clickhouse.first_after(TEAM_ID, ms(START) + 3000, ms(START) + 7_200_000)
        == ms(START) + 3_600_000
    )
    assert await clickhouse.first_after(TEAM_ID, ms(START) + 3_601_000, ms(START) + 7_200_000) is None


@pytest.fixture
def kafka_settings(
    settings_factory: Callable[..., Settings], kafka_bootstrap: str, clickhouse: ClickHouseEventSource
) -> Settings:
    return settings_factory(
        kafka_enabled=True,
        kafka_hosts=kafka_bootstrap,
        kafka_consumption_topic=f"events_plugin_ingestion_{uuid.uuid4().hex[:8]}",
        clickhouse_host=f"{clickhouse.settings.host}:{clickhouse.settings.port}",
        clickhouse_database=clickhouse.settings.database,
        plugin_fetch_allow_private=True,
    )


@pytest.mark.parametrize("language", ["python", "js"])
async def test_kafka_mode_exports_every_clickhouse_event_once(
    pg: asyncpg.Pool,
    pg_dsn: str,
    clickhouse: ClickHouseEventSource,
    kafka_settings: Settings,
    kafka_bootstrap: str,
    run_server: Any,
    language: str,
) -> None:
    await create_team(pg)
    await ensure_topics(kafka_bootstrap, [kafka_settings.kafka_consumption_topic], 1)
    stored = await insert_events(clickhouse, spread_times(EVENT_COUNT))
    await insert_events(clickhouse, spread_times(30, seed=4), team_id=TEAM_ID + 1, first_seq=10_000)
    warehouse = Warehouse(failures=2)
    async with local_server(warehouse.handle) as http:
        await add_exporter(pg, language, http.url)
        async with run_server(kafka_settings) as server:
            server._readiness_cache = None
            assert "clickhouse" not in await server.readiness()
            await start_export(pg_dsn)
            await wait_until(lambda: _done(pg, warehouse, EVENT_COUNT), within=240)
    counts = warehouse.counts()
    assert set(counts) == set(stored) and max(counts.values()) == 1
    assert warehouse.refused == 2
    assert {seq: ts for seq, ts, _name in warehouse.received} == {
        seq: iso_ms(moment) for seq, moment in stored.items()
    }


async def test_kafka_mode_honours_date_from_and_date_to(
    pg: asyncpg.Pool,
    pg_dsn: str,
    clickhouse: ClickHouseEventSource,
    kafka_settings: Settings,
    kafka_bootstrap: str,
    run_server: Any,
) -> None:
    await create_team(pg)
    await ensure_topics(kafka_bootstrap, [kafka_settings.kafka_consumption_topic], 1)
    date_from, date_to = START + timedelta(days=1), START + timedelta(days=1, hours=6)
    edges = [date_from - timedelta(seconds=1), date_from, date_to, date_to + timedelta(seconds=1)]
    stored = await insert_events(clickhouse, sorted(spread_times(1000) + edges))
    wanted = {seq for seq, moment in stored.items() if date_from <= moment <= date_to}
    warehouse = Warehouse(failures=0)
    async with local_server(warehouse.handle) as http:
        await add_exporter(pg, "js", http.url)
        async with run_server(kafka_settings):
            await start_export(pg_dsn, {"dateFrom": iso_ms(date_from), "dateTo": iso_ms(date_to)})
            await wait_until(lambda: _done(pg, warehouse, len(wanted)), within=120)
    assert sorted(warehouse.counts().elements()) == sorted(wanted)


async def test_kafka_mode_is_not_ready_without_clickhouse(
    settings_factory: Callable[..., Settings], kafka_bootstrap: str, run_server: Any, pg: asyncpg.Pool
) -> None:
    from tests.kafka_broker import free_port

    settings = settings_factory(
        kafka_enabled=True,
        kafka_hosts=kafka_bootstrap,
        kafka_consumption_topic=f"events_plugin_ingestion_{uuid.uuid4().hex[:8]}",
        clickhouse_host=f"127.0.0.1:{free_port()}",
    )
    await ensure_topics(kafka_bootstrap, [settings.kafka_consumption_topic], 1)
    async with run_server(settings) as server:
        server._readiness_cache = None
        failing = await server.readiness()
    assert "clickhouse" in failing and "ClickHouse" in failing["clickhouse"]


async def _done(pg: asyncpg.Pool, warehouse: Warehouse, expected: int) -> bool:
    return len(warehouse.counts()) >= expected and not await export_running(pg)


async def test_tls_with_clickhouse_ca_verifies_the_server(
    clickhouse_addresses: ClickHouseAddresses,
    certificates: Path,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert clickhouse_addresses.tls is not None
    secure = settings.replace(
        clickhouse_host=clickhouse_addresses.tls,
        clickhouse_secure=True,
        clickhouse_database="default",
        base_dir=str(certificates),
        clickhouse_ca="ca.pem",  # relative to BASE_DIR, as the original reads it
    )
    trusted = ClickHouseEventSource(ClickHouseSettings.from_settings(secure))
    assert await trusted.query("SELECT 1") == [(1,)]
    # without the CA the server's certificate is not trusted
    untrusted = ClickHouseEventSource(ClickHouseSettings.from_settings(secure.replace(clickhouse_ca=None)))
    with pytest.raises(Exception, match="unreachable"):
        await untrusted.query("SELECT 1")
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text  # asynch logs why


def test_clickhouse_settings_ports() -> None:
    base = load_settings({"NODE_ENV": "test"})
    assert ClickHouseSettings.from_settings(base.replace(clickhouse_host="ch")).port == 9000
    secure = ClickHouseSettings.from_settings(base.replace(clickhouse_host="ch", clickhouse_secure=True))
    assert (secure.host, secure.port, secure.secure) == ("ch", 9440, True)
    explicit = ClickHouseSettings.from_settings(base.replace(clickhouse_host="[::1]:9123"))
    assert (explicit.host, explicit.port) == ("::1", 9123)
