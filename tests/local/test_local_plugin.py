"""LocalPlugin's stores: the in-memory cache and storage answer a plugin exactly as Redis and
Postgres do (the same plugin is run on both and must see the same answers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.local.plugin import LocalPlugin
from tests.factories import TEAM_ID, create_plugin, create_plugin_config, create_team

CACHE_PLUGIN = """
async def process_event(event, meta):
    c = meta.cache
    answers = []
    answers.append(await c.get("missing", "fallback"))
    await c.set("object", {"a": [1, 2]})
    answers.append(await c.get("object"))
    await c.set("raw", "text", json_serialize=False)
    answers.append(await c.get("raw", json_serialize=False))
    answers.append([await c.incr("n"), await c.incr("n")])
    answers.append(await c.expire("n", 60))
    answers.append(await c.expire("nothing", 60))
    answers.append(await c.lpush("list", ["a", "b", "c", "b"]))
    answers.append(await c.lpush("list", "d"))
    answers.append(await c.lrange("list", 0, -1))
    answers.append(await c.lrange("list", 1, 2))
    answers.append(await c.lrange("list", -2, 10))
    answers.append(await c.llen("list"))
    answers.append(await c.lrem("list", 1, "b"))
    answers.append(await c.lpop("list", 2))
    answers.append(await c.lrange("list", 0, -1))
    answers.append(await c.lpop("empty", 1))
    answers.append(await c.llen("empty"))
    event["properties"]["answers"] = answers
    return event
"""

STORAGE_PLUGIN = """
async def process_event(event, meta):
    s = meta.storage
    cursor = meta.utils.cursor
    answers = [await s.get("missing", "fallback")]
    await s.set("object", {"a": [1, 2], "b": None})
    answers.append(await s.get("object"))
    await s.set("object", "replaced")
    answers.append(await s.get("object"))
    await s.delete("object")
    answers.append(await s.get("object"))
    await cursor.init("cursor", 5)
    await cursor.init("cursor", 100)
    answers.append([await cursor.increment("cursor"), await cursor.increment("cursor", 2.5)])
    event["properties"]["answers"] = answers
    return event
"""


def _plugin_dir(tmp_path: Path, source: str) -> Path:
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "plugin.json").write_text(json.dumps({"name": "stores", "main": "main.py"}))
    (folder / "main.py").write_text(source)
    return folder


async def _answers(folder: Path, **stores: Any) -> Any:
    async with LocalPlugin(folder, team_id=TEAM_ID, plugin_config_id=39, **stores) as plugin:
        result = await plugin.process_event({"event": "x"})
    assert result is not None
    return result["properties"]["answers"]


async def test_the_memory_cache_answers_as_redis_does(tmp_path: Path, redis: aioredis.Redis) -> None:
    folder = _plugin_dir(tmp_path, CACHE_PLUGIN)
    in_memory = await _answers(folder)
    on_redis = await _answers(folder, redis=redis)
    assert in_memory == on_redis
    assert in_memory[0] == "fallback" and in_memory[3] == [1, 2]
    # on Redis, under the server's key for plugin 1 and the team
    assert await redis.get(f"@plugin/1/{TEAM_ID}/object") == b'{"a":[1,2]}'


async def test_the_memory_storage_answers_as_postgres_does(tmp_path: Path, pg: asyncpg.Pool) -> None:
    await create_team(pg)
    await create_plugin(pg)
    await create_plugin_config(pg)  # id 39: the storage rows belong to it
    folder = _plugin_dir(tmp_path, STORAGE_PLUGIN)
    in_memory = await _answers(folder)
    on_postgres = await _answers(folder, pg=pg)
    assert in_memory == on_postgres
    assert in_memory == ["fallback", {"a": [1, 2], "b": None}, "replaced", None, [6, 8.5]]
    rows = await pg.fetch("SELECT key, value FROM posthog_pluginstorage WHERE plugin_config_id = 39")
    assert [(r["key"], r["value"]) for r in rows] == [("cursor", "8.5")]
