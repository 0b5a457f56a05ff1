"""Plugins written the way PostHog's public plugins are, plus runaway plugins that must be contained."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from plugin_server.plugins.js.vm import CallFailed, VMBroken
from plugin_server.plugins.loader import runtime_for
from plugin_server.plugins.runner import PluginRunner
from plugin_server.plugins.service import bridge_host_services
from plugin_server.services.capture import PluginCapture
from plugin_server.services.fetch import PluginFetch
from plugin_server.services.geoip import GeoIp
from plugin_server.services.host_api import HostServices
from plugin_server.services.jobs import GraphileJobQueue, JobQueueManager
from plugin_server.services.plugin_metrics import PluginMetrics
from plugin_server.services.posthog_api import PosthogApi
from tests.factories import create_plugin, create_plugin_config
from tests.js.conftest import PLUGIN_LABEL, Loader, config_error, default_event


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP endpoint recording what plugins send it."""
    received: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "body": await request.text(),
                "auth": request.headers.get("Authorization"),
            }
        )
        return web.json_response({"hello": "world"}, headers={"X-Thing": "yes"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", received
    await runner.cleanup()


async def test_hello_world_process_event(load_plugin: Loader) -> None:
    plugin = await load_plugin(
        """
        export function processEvent(event, { config }) {
            const counter = parseInt(config.bar || '0')
            event.properties = { ...event.properties, hello: `world${counter ? ' ' + counter : ''}` }
            return event
        }
    """,
        config={"bar": "2"},
    )
    outcome = await plugin.call("process_event", default_event())
    assert outcome.ok and outcome.value["properties"] == {"hello": "world 2"}


async def test_property_filter_with_config(load_plugin: Loader) -> None:
    plugin = await load_plugin(
        """
        export function setupPlugin({ config, global }) {
            global.propertiesToFilter = config.properties.split(',').map(p => p.trim())
        }
        export function processEvent(event, { global }) {
            let propertiesCopy = event.properties ? { ...event.properties } : {}
            for (const property of global.propertiesToFilter) {
                if (property in propertiesCopy) delete propertiesCopy[property]
            }
            return { ...event, properties: propertiesCopy }
        }
    """,
        config={"properties": "$ip, email"},
    )
    outcome = await plugin.call(
        "process_event", default_event(properties={"$ip": "1.2.3.4", "email": "a@b.c", "keep": 1})
    )
    assert outcome.ok and outcome.value["properties"] == {"keep": 1}


async def test_first_time_event_tracker_uses_cache_and_storage(
    load_plugin: Loader, redis: aioredis.Redis
) -> None:
    plugin = await load_plugin(
        """
        export async function processEvent(event, { config, cache, storage }) {
            const tracked = config.events.split(',')
            if (!tracked.includes(event.event)) return event
            const key = `${event.event}_${event.distinct_id}`
            const seen = (await cache.get(key, false)) || (await storage.get(key, false))
            event.properties.is_first_event_ever = !seen
            if (!seen) { await cache.set(key, true); await storage.set(key, true) }
            return event
        }
    """,
        config={"events": "signup,purchase"},
    )
    first = await plugin.process_event(default_event(event="signup", properties={}))
    second = await plugin.process_event(default_event(event="signup", properties={}))
    other = await plugin.process_event(default_event(event="pageview", properties={}))
    assert first and first["properties"]["is_first_event_ever"] is True
    assert second and second["properties"]["is_first_event_ever"] is False
    assert other and "is_first_event_ever" not in other["properties"]
    assert await redis.get("@plugin/60/2/signup_my_id") == b"true"


async def test_6_1_27_to_29_exporter_uses_fetch(
    load_plugin: Loader, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = receiver
    plugin = await load_plugin(
        """
        import fetchImported from 'node-fetch'
        const fetchRequired = require('node-fetch')
        export async function onEvent(event, { config }) {
            const res = await fetch(`${config.url}/global?event=${event.event}`, {
                method: 'POST', body: JSON.stringify(event), headers: { 'Content-Type': 'application/json',
                Authorization: 'Bearer abc' } })
            const json = await res.json()
            if (!res.ok || json.hello !== 'world' || res.headers.get('x-thing') !== 'yes') throw new Error('bad response')
            await fetchImported(`${config.url}/imported`)
            await fetchRequired(`${config.url}/required`)
        }
    """,
        config={"url": url},
    )
    assert (await plugin.call("on_event", default_event(event="$pageview"))).ok
    assert [r["path"] for r in received] == ["/global?event=$pageview", "/imported", "/required"]
    assert json.loads(received[0]["body"])["event"] == "$pageview" and received[0]["auth"] == "Bearer abc"


async def test_typescript_plugin_with_types(load_plugin: Loader) -> None:
    plugin = await load_plugin(
        """
        import { Plugin, PluginEvent, PluginMeta, RetryError } from '@posthog/plugin-scaffold'
        type Config = { prefix: string }
        interface Meta extends PluginMeta { config: Config }
        enum Kind { A = 'a', B = 'b' }
        export async function processEvent(event: PluginEvent, { config }: Meta): Promise<PluginEvent> {
            const name: string = event.event as string
            event.event = `${config.prefix}${name}-${Kind.B}`
            event.properties!.retry = new RetryError('x') instanceof RetryError
            return event
        }
    """,
        config={"prefix": "ts-"},
    )
    outcome = await plugin.call("process_event", default_event(event="e", properties={}))
    assert outcome.ok and outcome.value["event"] == "ts-e-b"
    assert outcome.value["properties"]["retry"] is True


async def test_6_8_jobs_are_enqueued_as_job_records(
    make_vm: Loader, runner: PluginRunner, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    fetch = PluginFetch()
    capture = PluginCapture(redis, celery_queue="celery")
    host = HostServices(
        geoip=GeoIp(disabled=True),
        jobs=JobQueueManager([GraphileJobQueue(schema="graphile_worker", pool=pg)]),
        capture=capture,
        api=PosthogApi(pg, fetch),
        fetch=fetch,
        metrics=PluginMetrics(capture),
    )
    bridge_host_services(runner, host)
    vm = await make_vm("""
        export const jobs = { logReply: (text, meta) => text }
        export async function processEvent(event, { jobs }) {
            await jobs.logReply('runNow').runNow()
            await jobs.logReply('runIn').runIn(1, 'second')
            await jobs.logReply('runAt').runAt(new Date(1000000000))
            await jobs.logReply().runNow()
            let error = null
            try { await jobs.x('y').runIn(1, 'fortnight') } catch (e) { error = e.message }
            event.properties = { error }
            return event
        }
    """)
    before = time.time() * 1000
    out = await vm.call_method("processEvent", default_event())
    assert out["properties"]["error"] == "Unknown time unit: fortnights"
    rows = await pg.fetch("SELECT payload::text FROM graphile_worker.jobs ORDER BY id")
    enqueued = [json.loads(r["payload"]) for r in rows]
    assert [(j["type"], j["payload"]) for j in enqueued] == [
        ("logReply", "runNow"),
        ("logReply", "runIn"),
        ("logReply", "runAt"),
        ("logReply", None),
    ]
    assert all(j["pluginConfigId"] == 39 and j["pluginConfigTeam"] == 2 for j in enqueued)
    assert 900 <= enqueued[1]["timestamp"] - before <= 2000 and enqueued[2]["timestamp"] == 1000000000
    assert await vm.run_job("logReply", "runIn") == "runIn"
    without_payload = await vm.run_job("logReply", None)  # gets meta as its first argument (spec §3.7)
    assert without_payload["config"] == {"localhostIP": "94.224.212.175"}


async def test_6_9_124_geoip_without_mmdb_rejects(make_vm: Loader) -> None:
    vm = await make_vm(
        "export async function processEvent(e, { geoip }) { await geoip.locate('89.160.20.129'); return e }"
    )
    with pytest.raises(CallFailed) as failed:
        await vm.call_method("processEvent", default_event())
    assert (
        failed.value.error.message == "IP location capabilities are not available in this PostHog instance!"
    )


async def test_runtime_choice_by_main_and_marker() -> None:
    source = "export function processEvent(e) { return e }"
    assert runtime_for("index.js", source) == runtime_for("dist/index.ts", source) == "js"
    assert runtime_for("main.py", "def process_event(event, meta): return event") == "python"
    assert (
        runtime_for("index.ts", "# posthog-plugin: python\ndef process_event(event, meta): return event")
        == "python"
    )


async def _ticks_during(call: Any) -> tuple[Any, int]:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        result = await call
    except Exception as exc:
        result = exc
    ticker.cancel()
    return result, ticks


async def test_infinite_loop_outside_the_loop_guard_is_stopped(load_plugin: Loader, pg: asyncpg.Pool) -> None:
    """`new Function` code escapes the transforms; the per-call deadline still stops it, the event
    loop keeps running meanwhile, and the same plugin and another one keep working."""
    other_source = "export function processEvent(e) { e.properties.other = true; return e }"
    await create_plugin(pg, plugin_id=61, name="other", source=other_source)
    await create_plugin_config(pg, config_id=40, plugin_id=61, order=2)
    stuck = await load_plugin(
        """
        const spin = new Function('while (true) {}')
        export function processEvent(event) { if (event.event === 'spin') spin(); event.properties.ok = true; return event }
    """,
        task_timeout=1,
    )
    started = time.monotonic()
    result, ticks = await _ticks_during(
        asyncio.gather(
            stuck.process_event(default_event(event="spin")),
            stuck.runner.call_method(40, "process_event", [default_event()]),
        )
    )
    assert time.monotonic() - started < 5 and ticks >= 50
    spun, passed = result
    assert spun["properties"]["$plugins_failed"] == [PLUGIN_LABEL]
    assert passed.ok and passed.value["properties"] == {"other": True}
    assert "timed out" in (await config_error(pg))["message"]
    again = await stuck.call("process_event", default_event())
    assert again.ok and again.value["properties"] == {"ok": True}


async def test_unbounded_allocation_is_contained(load_plugin: Loader, pg: asyncpg.Pool) -> None:
    plugin = await load_plugin(
        """
        const hoard = []
        export function processEvent(event) { for (;;) hoard.push(new Array(100000).fill(event.event)) }
    """,
        memory_limit_mb=64,
        task_timeout=10,
    )
    result, ticks = await _ticks_during(plugin.process_event(default_event()))
    assert result["properties"]["$plugins_failed"] == [PLUGIN_LABEL] and ticks > 0
    assert plugin.vm.broken == "Plugin exceeded its memory limit of 64 MB"
    assert (await config_error(pg))["message"] == plugin.vm.broken
    with pytest.raises(VMBroken):
        await plugin.vm.call_method("processEvent", default_event())
