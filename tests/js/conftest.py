"""Fixtures for JS plugin tests: team 2, plugin 60, config 39 rows, a PluginRunner with the shared
host services, and loaders for sources (a bare VM, or a plugin config loaded by the runner)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.plugins.host_services import PluginContext
from plugin_server.plugins.js.sandbox_runtime import JSRuntime, ServicesHost
from plugin_server.plugins.js.transpile import Transpiler
from plugin_server.plugins.js.vm import Attachment, JSPluginVM, VMSpec
from plugin_server.plugins.lifecycle import LoadedConfig
from plugin_server.plugins.pool import CallOutcome
from plugin_server.plugins.runner import PluginRunner
from tests.factories import create_plugin, create_plugin_config, create_team, insert_row

Loader = Callable[..., Awaitable[Any]]
CONFIG = {"localhostIP": "94.224.212.175"}
PLUGIN_LABEL = "test-maxmind-plugin (39)"


@pytest.fixture
async def rows(pg: asyncpg.Pool) -> PluginContext:
    await create_team(pg)
    await create_plugin(pg, plugin_id=60, name="test-maxmind-plugin", source="")
    await create_plugin_config(pg, config_id=39, plugin_id=60, config=CONFIG)
    await insert_row(
        pg,
        "posthog_pluginattachment",
        {
            "id": 1,
            "plugin_config_id": 39,
            "team_id": 2,
            "key": "maxmindMmdb",
            "content_type": "application/octet-stream",
            "file_name": "test.txt",
            "file_size": 4,
            "contents": b"test",
        },
    )
    return PluginContext(plugin_config_id=39, plugin_id=60, team_id=2, plugin_name="test-maxmind-plugin")


@pytest.fixture
async def transpiler() -> AsyncIterator[Transpiler]:
    t = Transpiler()
    yield t
    t.close()


@pytest.fixture
async def runner(
    rows: PluginContext, settings: Settings, pg: asyncpg.Pool, redis: aioredis.Redis
) -> AsyncIterator[PluginRunner]:
    """Not started: `load_plugin` starts it. Load retries are pushed far beyond a test's length."""
    r = PluginRunner(
        dataclasses.replace(settings, worker_concurrency=1),
        pg,
        redis,
        str(uuid.uuid4()),
        retry_delay_scale=1000.0,
        log_flush_seconds=0.05,
    )
    yield r
    await r.stop()


def spec(source: str, **kwargs: Any) -> VMSpec:
    kwargs.setdefault("config", CONFIG)
    kwargs.setdefault(
        "attachments", {"maxmindMmdb": Attachment("application/octet-stream", "test.txt", b"test")}
    )
    kwargs.setdefault("expose_test_timer", True)
    return VMSpec(source=source, **kwargs)


@pytest.fixture
async def make_vm(rows: PluginContext, runner: PluginRunner) -> AsyncIterator[Loader]:
    """`await make_vm(source, **VMSpec fields)`: a created VM (setupPlugin not called) answered by
    the runner's host services as config 39."""
    made: list[tuple[JSPluginVM, ServicesHost]] = []

    async def make(source: str, **kwargs: Any) -> JSPluginVM:
        host = ServicesHost(rows, runner.services)
        vm = await JSPluginVM.create(spec(source, **kwargs), host, runner.js_transpiler)
        made.append((vm, host))
        return vm

    yield make
    for vm, host in made:
        await vm.close()
        await host.close()


@dataclasses.dataclass
class LoadedPlugin:
    """A plugin config loaded by the runner, as the server loads it."""

    runner: PluginRunner
    config_id: int

    @property
    def loaded(self) -> LoadedConfig:
        return self.runner.loaded[self.config_id]

    @property
    def vm(self) -> JSPluginVM:
        runtime = self.loaded.runtime
        assert isinstance(runtime, JSRuntime) and runtime.vm is not None
        return runtime.vm

    async def process_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Through the runner's processEvent chain (team_id check, failures recorded, markers)."""
        [processed] = await self.runner.process_events([event])
        return processed

    async def call(self, method: str, *args: Any) -> CallOutcome:
        """One Python-named method of this config, as the runtime answers it."""
        return await self.runner.call_method(self.config_id, method, list(args))


@pytest.fixture
async def load_plugin(pg: asyncpg.Pool, runner: PluginRunner) -> Loader:
    """`await load_plugin(source, config=, task_timeout=, memory_limit_mb=)`: config 39 loaded by
    the runner (setupPlugin done, or the load failure recorded)."""

    async def load(
        source: str,
        *,
        config: dict[str, Any] | None = None,
        task_timeout: float | None = None,
        memory_limit_mb: int = 128,
    ) -> LoadedPlugin:
        await pg.execute("UPDATE posthog_plugin SET source = $1 WHERE id = 60", source)
        await pg.execute("UPDATE posthog_pluginconfig SET config = $1 WHERE id = 39", config or CONFIG)
        if task_timeout is not None:
            runner.settings = dataclasses.replace(runner.settings, task_timeout=task_timeout)
        runner.runtimes["js"] = lambda s: JSRuntime(
            s, runner.services, runner.js_transpiler, memory_limit_mb, expose_test_timer=True
        )
        await runner.start()
        await runner.wait_loaded()
        return LoadedPlugin(runner, 39)

    return load


async def config_error(pg: asyncpg.Pool, config_id: int = 39) -> Any:
    """posthog_pluginconfig.error once a failure recorded in the background has landed."""
    for _ in range(100):
        error = await pg.fetchval("SELECT error FROM posthog_pluginconfig WHERE id = $1", config_id)
        if error is not None:
            return error
        await asyncio.sleep(0.02)
    return None


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
