"""JS plugins behind the runtime seam: loaded from Postgres by the PluginRunner next to a Python
plugin, run in one processEvent chain, reaching the same cache (spec plugins.md §7.1, §7.9)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.plugins.runner import PluginRunner
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.js.conftest import default_event

JS_SOURCE = """
import { PluginEvent } from '@posthog/plugin-scaffold'
export async function setupPlugin({ cache }) { await cache.set('from_js', 'js was here') }
export async function processEvent(event: PluginEvent, { cache, storage }) {
    event.properties.js = (await cache.get('from_js')) as string
    await storage.set('seen', (await storage.get('seen', 0)) + 1)
    return event
}
"""
PY_SOURCE = """# posthog-plugin: python
async def process_event(event, meta):
    event["properties"]["python_saw"] = event["properties"].get("js")
    return event
"""


async def test_js_and_python_plugins_share_one_chain(
    pg: asyncpg.Pool, redis: aioredis.Redis, settings: Settings
) -> None:
    await create_team(pg)
    await create_plugin(pg, plugin_id=60, name="js plugin", source=JS_SOURCE)
    await create_plugin(pg, plugin_id=61, name="py plugin", source=PY_SOURCE)
    await create_plugin_config(pg, config_id=39, plugin_id=60, order=1)
    await create_plugin_config(pg, config_id=40, plugin_id=61, order=2)
    runner = PluginRunner(settings, pg, redis, str(uuid.uuid4()), log_flush_seconds=0.05)
    await runner.start()
    try:
        await runner.wait_loaded()
        [event] = await runner.process_events([default_event()])
        assert event is not None
        assert event["properties"]["js"] == "js was here"
        assert event["properties"]["python_saw"] == "js was here"
        assert event["properties"]["$plugins_succeeded"] == ["js plugin (39)", "py plugin (40)"]
        assert await redis.get("@plugin/60/2/from_js") == b'"js was here"'
        stored = await pg.fetchval("SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = 39")
        assert stored == "1"
        capabilities = await pg.fetchval("SELECT capabilities FROM posthog_plugin WHERE id = 60")
        assert capabilities["methods"] == ["setupPlugin", "processEvent"]
        for _ in range(100):
            loaded = await pg.fetchval(
                "SELECT count(*) FROM posthog_pluginlogentry WHERE plugin_config_id = 39 AND message LIKE 'Plugin loaded%'"
            )
            if loaded:
                break
            await asyncio.sleep(0.05)
        assert loaded == 1
    finally:
        await runner.stop()
