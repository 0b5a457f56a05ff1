"""GeoIP against real Postgres/Redis, a database built with mmdb_writer and a local download
server standing in for mmdb.posthog.net (services §6, §9.4; plugins §4.6, scenario 124)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import brotli
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from plugin_server.metrics import REGISTRY
from plugin_server.services.geoip import (
    MMDB_ATTACHMENT_KEY,
    MMDB_STATUS_KEY,
    MMDB_UNAVAILABLE,
    GeoIp,
    GeoIpUnavailable,
)
from tests.services.http_server import local_server

KNOWN_IP = "89.160.20.129"


@pytest.fixture(scope="module")
def mmdb_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-City", languages=["en"], description="test")
    writer.insert_network(
        IPSet(["89.160.20.128/25"]),
        {
            "city": {"geoname_id": 2694762, "names": {"en": "Linköping", "pt-BR": "Linköping"}},
            "continent": {"code": "EU", "geoname_id": 6255148, "names": {"en": "Europe"}},
            "country": {"geoname_id": 2661886, "iso_code": "SE", "names": {"en": "Sweden"}},
            "location": {
                "accuracy_radius": 76,
                "latitude": 58.4167,
                "longitude": 15.6167,
                "time_zone": "Europe/Stockholm",
            },
            "postal": {"code": "583 31"},
            "subdivisions": [
                {"geoname_id": 2685867, "iso_code": "E", "names": {"en": "Östergötland County"}}
            ],
        },
    )
    path = tmp_path_factory.mktemp("mmdb") / "GeoLite2-City-Test.mmdb"
    writer.to_db_file(str(path))
    return path.read_bytes()


def today_name(days_ago: int = 0) -> str:
    day = (datetime.now(UTC) - timedelta(days=days_ago)).date().isoformat()
    return f"GeoLite2-City-{day}.mmdb"


async def store_row(pg: asyncpg.Pool, data: bytes, file_name: str) -> None:
    compressed = brotli.compress(data)
    await pg.execute(
        "INSERT INTO posthog_pluginattachment (key, content_type, file_name, file_size, contents)"
        " VALUES ($1, 'vnd.maxmind.maxmind-db', $2, $3, $4)",
        MMDB_ATTACHMENT_KEY,
        file_name + ".br",
        len(compressed),
        compressed,
    )


def download_handler(data: bytes, file_name: str) -> Any:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(
            body=brotli.compress(data),
            headers={
                "content-type": "vnd.maxmind.maxmind-db",
                "content-disposition": f'attachment; filename="{file_name}"',
            },
        )

    return handler


def assert_known_lookups(geoip: GeoIp) -> None:
    record = geoip.locate(KNOWN_IP)
    assert record is not None
    assert record["city"]["names"]["en"] == "Linköping"
    assert record["city"]["names"]["pt-BR"] == "Linköping"  # language codes are not camel-cased
    assert record["country"]["isoCode"] == "SE"
    assert record["location"]["timeZone"] == "Europe/Stockholm"
    assert record["location"]["accuracyRadius"] == 76
    assert record["subdivisions"][0]["isoCode"] == "E"
    assert record["traits"]["ipAddress"] == KNOWN_IP
    assert record["traits"]["network"] == "89.160.20.128/25"
    assert geoip.locate("asdfgh") is None
    assert geoip.locate("1.1.1.1") is None


async def test_9_4_20_disabled(pg: asyncpg.Pool, redis: aioredis.Redis, mmdb_bytes: bytes) -> None:
    async with local_server(download_handler(mmdb_bytes, today_name())) as server:
        geoip = GeoIp(disabled=True, postgres=pg, redis=redis, download_url=server.url)
        await geoip.start()
        with pytest.raises(GeoIpUnavailable) as raised:
            geoip.locate(KNOWN_IP)
        assert str(raised.value) == MMDB_UNAVAILABLE
        assert server.requests == []
        assert not geoip.has_reader
        assert geoip.ready() == (True, "")
        await geoip.stop()
    assert await redis.get(MMDB_STATUS_KEY) is None


async def test_9_4_21_first_download(pg: asyncpg.Pool, redis: aioredis.Redis, mmdb_bytes: bytes) -> None:
    async with local_server(download_handler(mmdb_bytes, today_name())) as server:
        geoip = GeoIp(disabled=False, postgres=pg, redis=redis, download_url=server.url + "/")
        await geoip.start()
        try:
            assert [(m, p) for m, p, _h, _b in server.requests] == [("GET", "/")]
            assert_known_lookups(geoip)
            assert geoip.ready() == (True, "")
        finally:
            await geoip.stop()
    rows = await pg.fetch("SELECT * FROM posthog_pluginattachment WHERE key = $1", MMDB_ATTACHMENT_KEY)
    assert len(rows) == 1
    assert rows[0]["file_name"] == today_name() + ".br"
    assert rows[0]["team_id"] is None and rows[0]["plugin_config_id"] is None
    assert rows[0]["content_type"] == "vnd.maxmind.maxmind-db"
    assert json.loads(await redis.get(MMDB_STATUS_KEY)) == "idle"


async def test_9_4_22_cached_database(pg: asyncpg.Pool, redis: aioredis.Redis, mmdb_bytes: bytes) -> None:
    await store_row(pg, mmdb_bytes, today_name())
    async with local_server(download_handler(mmdb_bytes, today_name())) as server:
        geoip = GeoIp(disabled=False, postgres=pg, redis=redis, download_url=server.url)
        await geoip.start()
        try:
            assert server.requests == []
            assert_known_lookups(geoip)
        finally:
            await geoip.stop()


async def test_9_10_43_waits_for_another_instance_fetching(
    pg: asyncpg.Pool, redis: aioredis.Redis, mmdb_bytes: bytes
) -> None:
    await redis.set(MMDB_STATUS_KEY, json.dumps("fetching"), ex=120)

    async def other_instance() -> None:
        await asyncio.sleep(0.5)
        await store_row(pg, mmdb_bytes, today_name())
        await redis.set(MMDB_STATUS_KEY, json.dumps("idle"))

    async with local_server(download_handler(mmdb_bytes, today_name())) as server:
        geoip = GeoIp(disabled=False, postgres=pg, redis=redis, download_url=server.url)
        other = asyncio.create_task(other_instance())
        await geoip.start()
        await other
        try:
            assert server.requests == []
            assert_known_lookups(geoip)
        finally:
            await geoip.stop()


async def test_9_10_43_unavailable_status_means_no_download(
    pg: asyncpg.Pool, redis: aioredis.Redis, mmdb_bytes: bytes
) -> None:
    await redis.set(MMDB_STATUS_KEY, json.dumps("unavailable"), ex=120)
    async with local_server(download_handler(mmdb_bytes, today_name())) as server:
        geoip = GeoIp(disabled=False, postgres=pg, redis=redis, download_url=server.url)
        await geoip.start()  # completes
        try:
            assert server.requests == []
            with pytest.raises(GeoIpUnavailable, match="not available in this PostHog instance"):
                geoip.locate(KNOWN_IP)
            # the server is not held back; the gauge and the lookups say GeoIP is missing
            assert geoip.ready() == (True, "")
            assert REGISTRY.get_sample_value("plugin_server_mmdb_available") == 0
        finally:
            await geoip.stop()


async def test_download_failure_is_graceful_and_marks_unavailable(
    pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    # nothing listens there: no network, as on an air-gapped host
    geoip = GeoIp(
        disabled=False, postgres=pg, redis=redis, download_url="http://127.0.0.1:9/", download_timeout=2
    )
    await geoip.start()
    try:
        assert not geoip.has_reader
        with pytest.raises(GeoIpUnavailable):
            geoip.locate(KNOWN_IP)
    finally:
        await geoip.stop()
    assert json.loads(await redis.get(MMDB_STATUS_KEY)) == "unavailable"
    assert 0 < await redis.ttl(MMDB_STATUS_KEY) <= 120  # kept at 120 s, as other instances expect


async def test_9_10_44_stale_database_served_then_replaced(
    pg: asyncpg.Pool, redis: aioredis.Redis, mmdb_bytes: bytes
) -> None:
    await store_row(pg, mmdb_bytes, today_name(days_ago=46))
    async with local_server(download_handler(mmdb_bytes, today_name())) as server:
        geoip = GeoIp(disabled=False, postgres=pg, redis=redis, download_url=server.url)
        await geoip.start()
        try:
            assert_known_lookups(geoip)  # served from the old row at once
            for _ in range(100):
                if json.loads(await redis.get(MMDB_STATUS_KEY) or '""') == "idle":
                    break
                await asyncio.sleep(0.05)
            assert len(server.requests) == 1
            names = [r["file_name"] for r in await pg.fetch("SELECT file_name FROM posthog_pluginattachment")]
            assert names == [today_name() + ".br"]
            assert geoip.file_name == today_name() + ".br"
            assert_known_lookups(geoip)
        finally:
            await geoip.stop()


async def test_invalid_stored_file_name_is_an_error(
    pg: asyncpg.Pool, redis: aioredis.Redis, mmdb_bytes: bytes
) -> None:
    await store_row(pg, mmdb_bytes, "GeoLite2-City-latest.mmdb")
    geoip = GeoIp(disabled=False, postgres=pg, redis=redis)
    with pytest.raises(RuntimeError, match="must include an ISO date"):
        await geoip.start()


async def test_mmdb_file_path(tmp_path: Path, mmdb_bytes: bytes) -> None:
    path = tmp_path / "city.mmdb"
    path.write_bytes(mmdb_bytes)
    geoip = GeoIp(disabled=False, file_path=str(path))
    await geoip.start()
    try:
        assert_known_lookups(geoip)
    finally:
        await geoip.stop()
    missing = GeoIp(disabled=False, file_path=str(tmp_path / "missing.mmdb"))
    assert missing.ready() == (False, "GeoIP database loading")
    await missing.start()
    assert not missing.has_reader
