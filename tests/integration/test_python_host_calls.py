"""A Python plugin's calls to the host, through the real server: export_events through the
buffer, posthog.capture coming back as an event, meta.geoip.locate, fetch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from plugin_server.config import Settings
from tests.integration.conftest import QUEUE, celery_event, service, storage, wait_until
from tests.plugins.conftest import add_python_plugin
from tests.services.http_server import local_server

EXPORTER = """
async def export_events(events, meta):
    for event in events:
        await meta.storage.set(f"exported-{event['properties']['seq']}", event["event"])
"""


async def event_count(pg: asyncpg.Pool) -> int:
    count: int = await pg.fetchval("SELECT count(*) FROM posthog_event")
    return count


async def test_export_events_flushed_on_reload_and_on_shutdown(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    await add_python_plugin(pg, EXPORTER)
    async with run_server(settings):
        await redis.lpush(QUEUE, *(celery_event(seq) for seq in range(3)))
        await wait_until(lambda: _equals(event_count(pg), 3))
        # in test mode a buffer waits 600 s: nothing is exported yet
        assert await storage(pg) == {}
        # a changed config is reloaded: the old one's buffer is flushed before its teardown
        await pg.execute("UPDATE posthog_pluginconfig SET updated_at = now() WHERE id = 39")
        await redis.publish(settings.plugins_reload_pubsub_channel, "reload")

        async def exported() -> int:
            return len(await storage(pg))

        await wait_until(lambda: _equals(exported(), 3))
        await redis.lpush(QUEUE, *(celery_event(seq) for seq in range(3, 5)))
        await wait_until(lambda: _equals(event_count(pg), 5))
    # the server's shutdown flushed the rest
    assert await storage(pg) == {f"exported-{seq}": '"custom event"' for seq in range(5)}


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_capture_from_a_plugin_is_ingested_as_a_new_event(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    await add_python_plugin(
        pg,
        """
        async def process_event(event, meta):
            if event["event"] != "from plugin":
                await meta.posthog.capture("from plugin", {"origin": event["properties"]["seq"]})
            return event
        """,
    )
    async with run_server(settings):
        await redis.lpush(QUEUE, celery_event(7))
        await wait_until(lambda: _equals(event_count(pg), 2))
    row = await pg.fetchrow("SELECT distinct_id, properties FROM posthog_event WHERE event = 'from plugin'")
    assert row["distinct_id"] == "test-maxmind-plugin"
    assert row["properties"]["origin"] == 7
    assert row["properties"]["$lib"] == "posthog-plugin-server"
    assert await redis.llen(QUEUE) == 0


GEOIP_PLUGIN = """
async def process_event(event, meta):
    location = await meta.geoip.locate(event["properties"]["lookup"])
    event["properties"]["city"] = location["city"]["names"]["en"] if location else None
    event["properties"]["country"] = location["country"]["isoCode"] if location else None
    return event
"""


async def test_geoip_locate_with_mmdb_file_path(
    pg: asyncpg.Pool,
    team: int,
    redis: aioredis.Redis,
    settings: Settings,
    run_server: Any,
    mmdb_path: Path,
) -> None:
    await add_python_plugin(pg, GEOIP_PLUGIN)
    geoip_settings = settings.replace(disable_mmdb=False, mmdb_file_path=str(mmdb_path))
    async with run_server(geoip_settings):
        await redis.lpush(QUEUE, celery_event(1, lookup="89.160.20.129"), celery_event(2, lookup="1.1.1.1"))
        await wait_until(lambda: _equals(event_count(pg), 2))
    rows = await pg.fetch("SELECT properties FROM posthog_event ORDER BY (properties->>'seq')::int")
    assert [(r["properties"]["city"], r["properties"]["country"]) for r in rows] == [
        ("Linköping", "SE"),
        (None, None),
    ]


FETCH_PLUGIN = """
async def process_event(event, meta):
    try:
        response = await meta.fetch(meta.config["url"] + "/hello", method="POST", json={"a": 1})
        event["properties"]["fetched"] = [response.status, response.text()]
    except Exception as exc:
        event["properties"]["fetch_error"] = [type(exc).__name__, str(exc)]
    return event
"""


@pytest.mark.parametrize("allow_private", [True, False])
async def test_fetch_to_a_private_address_only_when_allowed(
    pg: asyncpg.Pool,
    team: int,
    redis: aioredis.Redis,
    settings: Settings,
    run_server: Any,
    allow_private: bool,
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {(await request.json())['a']}")

    async with local_server(hello) as http:
        await add_python_plugin(pg, FETCH_PLUGIN, config={"url": http.url})
        async with run_server(settings.replace(plugin_fetch_allow_private=allow_private)):
            await redis.lpush(QUEUE, celery_event(1))
            await wait_until(lambda: _equals(event_count(pg), 1))
        properties = await pg.fetchval("SELECT properties FROM posthog_event")
        if allow_private:
            assert properties["fetched"] == [200, "hello 1"]
            assert [(m, p) for m, p, _h, _b in http.requests] == [("POST", "/hello")]
        else:
            assert "fetched" not in properties
            assert http.requests == []
            name, message = properties["fetch_error"]
            assert "127.0.0.1" in message or "private" in message.lower(), (name, message)


async def test_export_retry_error_is_retried_through_the_job_queue(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    await add_python_plugin(
        pg,
        """
        from posthog_plugin import RetryError

        async def export_events(events, meta):
            if await meta.cache.incr("attempts") == 1:
                raise RetryError("the warehouse is asleep")
            for event in events:
                await meta.storage.set(f"exported-{event['properties']['seq']}", event["event"])
        """,
        config={"exportEventsBufferBytes": "1"},  # every event flushes at once
    )
    async with run_server(settings):
        await redis.lpush(QUEUE, celery_event(1))

        async def exported() -> dict[str, Any]:
            return await storage(pg)

        # first attempt raised RetryError: job exportEventsWithRetry runs it again after 6 s
        assert await wait_until(exported, 20) == {"exported-1": '"custom event"'}
    assert await redis.get("@plugin/60/2/attempts") == b"2"
    assert await pg.fetchval("SELECT error FROM posthog_pluginconfig WHERE id = 39") is None


async def test_plugin_metrics_reach_the_metrics_service_and_are_captured(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    await add_python_plugin(
        pg,
        """
        metrics = {"seen": "sum", "biggest": "max"}

        def process_event(event, meta):
            meta.metrics["seen"].increment(1)
            meta.metrics["biggest"].max(event["properties"]["seq"])
            return event
        """,
    )
    async with run_server(settings) as server:
        await redis.lpush(QUEUE, *(celery_event(seq) for seq in range(3)))
        await wait_until(lambda: _equals(event_count(pg), 3))
        metrics_service = service(server, "plugin-metrics")
        await wait_until(lambda: _value(metrics_service.current(39) == {"seen": 3, "biggest": 2}))
        # the flush captures $$plugin_metrics back onto the Celery list, as posthog.capture does
        await metrics_service.flush()
        await wait_until(
            lambda: pg.fetchval("SELECT count(*) = 1 FROM posthog_event WHERE event = '$$plugin_metrics'")
        )
    row = await pg.fetchrow("SELECT properties FROM posthog_event WHERE event = '$$plugin_metrics'")
    properties = row["properties"] if isinstance(row["properties"], dict) else json.loads(row["properties"])
    assert properties["seen"] == 3 and properties["biggest"] == 2
    assert properties["plugin_id"] == 60


async def _value(value: Any) -> Any:
    return value
