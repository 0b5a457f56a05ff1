"""Helpers for end-to-end tests through the real server: events on the Celery list, waiting for
a condition, and reaching one of the running server's services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from plugin_server.app import Server
from plugin_server.plugins.runner import PluginRunner
from plugin_server.queues.celery_format import encode_celery_event
from tests.factories import TEAM_ID, create_team

QUEUE = "posthog-plugins"


@pytest.fixture
async def team(pg: asyncpg.Pool) -> int:
    return await create_team(pg)


def celery_event(seq: int, event: str = "custom event", **properties: Any) -> bytes:
    return encode_celery_event(
        f"user-{seq}",
        "127.0.0.1",
        "http://localhost",
        {
            "event": event,
            "uuid": f"00000000-0000-0000-0000-{seq:012d}",
            "properties": {"seq": seq, **properties},
        },
        TEAM_ID,
        "2021-10-28T12:00:01.123456+00:00",
        "2021-10-28T12:00:00.500000Z",
        queue=QUEUE,
    ).encode()


async def wait_until(condition: Callable[[], Awaitable[Any]], within: float = 20.0) -> Any:
    """Poll `condition` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + within
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {within} s (last value {value!r})")
        await asyncio.sleep(0.05)


def service(server: Server, name: str) -> Any:
    """The running server's service called `name`."""
    for item in server._services:
        if item.name == name:
            return item
    raise LookupError(f"no service named {name!r}")


def runner_of(server: Server) -> PluginRunner:
    assert server.ctx is not None
    runner: PluginRunner = server.ctx.extras["plugin_runner"]
    return runner


async def storage(pg: asyncpg.Pool, config_id: int = 39) -> dict[str, Any]:
    rows = await pg.fetch(
        "SELECT key, value FROM posthog_pluginstorage WHERE plugin_config_id = $1", config_id
    )
    return {r["key"]: r["value"] for r in rows}


@pytest.fixture
def mmdb_path(tmp_path: Path) -> Path:
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-City", languages=["en"], description="test")
    writer.insert_network(
        IPSet(["89.160.20.128/25"]),
        {
            "city": {"geoname_id": 2694762, "names": {"en": "Linköping"}},
            "country": {"geoname_id": 2661886, "iso_code": "SE", "names": {"en": "Sweden"}},
        },
    )
    path = tmp_path / "GeoLite2-City-Test.mmdb"
    writer.to_db_file(str(path))
    return path
