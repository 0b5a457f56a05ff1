"""Fixtures for JS plugin tests: team 2, plugin 60, config 39 rows and a loader for sources."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.plugins.js.host import JSPluginHost, PluginConfigRef
from plugin_server.plugins.js.runtime import JSPlugin
from plugin_server.plugins.js.transpile import Transpiler
from plugin_server.plugins.js.vm import Attachment, JSPluginVM, VMSpec
from tests.factories import create_plugin, create_plugin_config, create_team

Loader = Callable[..., Awaitable[Any]]


@pytest.fixture
async def rows(pg: asyncpg.Pool) -> PluginConfigRef:
    await create_team(pg)
    await create_plugin(pg, plugin_id=60, name="test-maxmind-plugin", source="")
    await create_plugin_config(pg, config_id=39, plugin_id=60, config={"localhostIP": "94.224.212.175"})
    return PluginConfigRef(plugin_config_id=39, plugin_id=60, team_id=2, plugin_name="test-maxmind-plugin")


@pytest.fixture
async def transpiler() -> AsyncIterator[Transpiler]:
    t = Transpiler()
    yield t
    t.close()


@pytest.fixture
async def host(rows: PluginConfigRef, pg: asyncpg.Pool, redis: aioredis.Redis) -> AsyncIterator[JSPluginHost]:
    h = JSPluginHost(ref=rows, pg=pg, redis=redis, instance_id=uuid.uuid4())
    yield h
    await h.close()


def spec(source: str, **kwargs: Any) -> VMSpec:
    kwargs.setdefault("config", {"localhostIP": "94.224.212.175"})
    kwargs.setdefault(
        "attachments", {"maxmindMmdb": Attachment("application/octet-stream", "test.txt", b"test")}
    )
    kwargs.setdefault("expose_test_timer", True)
    return VMSpec(source=source, **kwargs)


@pytest.fixture
async def make_vm(host: JSPluginHost, transpiler: Transpiler) -> AsyncIterator[Loader]:
    """`await make_vm(source, **VMSpec fields)`: a created VM (setupPlugin not called)."""
    made: list[JSPluginVM] = []

    async def make(source: str, **kwargs: Any) -> JSPluginVM:
        vm = await JSPluginVM.create(spec(source, **kwargs), host, transpiler)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        await vm.close()


@pytest.fixture
async def load_plugin(host: JSPluginHost, transpiler: Transpiler) -> AsyncIterator[Loader]:
    """`await load_plugin(source, **VMSpec fields)`: a loaded plugin (setupPlugin done)."""
    made: list[JSPlugin] = []

    async def load(source: str, **kwargs: Any) -> JSPlugin:
        plugin = await JSPlugin.load(spec(source, **kwargs), host, transpiler)
        made.append(plugin)
        return plugin

    yield load
    for plugin in made:
        await plugin.vm.close()


def default_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "distinct_id": "my_id",
        "ip": "127.0.0.1",
        "site_url": "http://localhost",
        "team_id": 2,
        "now": "2020-02-23T02:15:00Z",
        "event": "default event",
        "properties": {},
    }
    event.update(overrides)
    return event
