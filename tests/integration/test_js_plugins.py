"""JS plugins on the same host services as Python plugins, through the real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from plugin_server.config import Settings
from tests.factories import create_plugin, create_plugin_config
from tests.integration.conftest import QUEUE, celery_event, runner_of, storage, wait_until
from tests.services.http_server import local_server

JOBS_AND_CAPTURE = """
export async function processEvent(event, { jobs }) {
    if (event.event === 'custom event') {
        await jobs.replyJob({ seq: event.properties.seq }).runNow()
    }
    return event
}

export const jobs = {
    replyJob: async (payload, { storage }) => {
        await storage.set('reply', payload)
        await posthog.capture('from js', { origin: payload.seq })
    },
}
"""

HOST_CALLS = """
export async function processEvent(event, { config, geoip }) {
    const location = await geoip.locate('89.160.20.129')
    event.properties.city = location.city.names.en
    const response = await fetch(config.url + '/echo', {
        method: 'POST',
        headers: { 'X-Test': 'yes' },
        body: JSON.stringify({ seq: event.properties.seq }),
    })
    event.properties.fetched = [response.status, await response.json(), response.headers.get('x-reply')]
    return event
}
"""


async def add_js_plugin(pg: asyncpg.Pool, source: str, config: dict[str, Any] | None = None) -> None:
    await create_plugin(pg, plugin_id=60, name="js-plugin", source=source)
    await create_plugin_config(pg, config_id=39, plugin_id=60, config=config)


async def events(pg: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pg.fetch("SELECT event, distinct_id, properties FROM posthog_event ORDER BY id")


async def test_js_runtime_calls_are_registered_by_the_host(
    pg: asyncpg.Pool, team: int, settings: Settings, run_server: Any
) -> None:
    async with run_server(settings) as server:
        services = runner_of(server).services
        for name in ("posthog.capture", "posthog.api", "geoip.locate", "jobs.enqueue", "fetch"):
            assert services.has(name), name


async def test_js_plugin_job_captures_an_event_that_is_ingested(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    await add_js_plugin(pg, JOBS_AND_CAPTURE)
    async with run_server(settings):
        await redis.lpush(QUEUE, celery_event(5))

        async def both_events() -> list[asyncpg.Record] | None:
            rows = await events(pg)
            return rows if len(rows) == 2 else None

        rows = await wait_until(both_events)
    assert json.loads((await storage(pg))["reply"]) == {"seq": 5}
    captured = [r for r in rows if r["event"] == "from js"]
    assert len(captured) == 1
    assert captured[0]["distinct_id"] == "js-plugin"
    assert captured[0]["properties"]["origin"] == 5
    assert await pg.fetchval("SELECT error FROM posthog_pluginconfig WHERE id = 39") is None


async def test_js_plugin_geoip_and_fetch_through_the_host(
    pg: asyncpg.Pool,
    team: int,
    redis: aioredis.Redis,
    settings: Settings,
    run_server: Any,
    mmdb_path: Path,
) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {"got": body, "header": request.headers.get("X-Test")}, headers={"X-Reply": "1"}
        )

    async with local_server(echo) as http:
        await add_js_plugin(pg, HOST_CALLS, {"url": http.url})
        server_settings = settings.replace(
            disable_mmdb=False, mmdb_file_path=str(mmdb_path), plugin_fetch_allow_private=True
        )
        async with run_server(server_settings):
            await redis.lpush(QUEUE, celery_event(3))
            await wait_until(lambda: _count(pg, 1))
    [row] = await events(pg)
    assert row["properties"]["city"] == "Linköping"
    assert row["properties"]["fetched"] == [200, {"got": {"seq": 3}, "header": "yes"}, "1"]
    assert row["properties"]["$plugins_succeeded"] == ["js-plugin (39)"]


async def _count(pg: asyncpg.Pool, expected: int) -> bool:
    return bool(await pg.fetchval("SELECT count(*) FROM posthog_event") == expected)
