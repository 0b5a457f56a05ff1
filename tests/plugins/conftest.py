"""Fixtures for plugin tests: a PluginRunner on the module's database and Redis, and helpers to
add Python plugins."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.plugins.runner import PluginRunner
from tests.factories import TEAM_ID, create_plugin, create_plugin_config, create_team

PY_MARKER = "# posthog-plugin: python\n"


def py_source(body: str) -> str:
    return PY_MARKER + textwrap.dedent(body)


async def add_python_plugin(
    pg: asyncpg.Pool,
    body: str,
    *,
    plugin_id: int = 60,
    config_id: int = 39,
    team_id: int = TEAM_ID,
    order: int = 0,
    config: dict[str, Any] | None = None,
    name: str = "test-maxmind-plugin",
) -> int:
    await create_plugin(pg, plugin_id=plugin_id, name=name, source=py_source(body))
    return await create_plugin_config(
        pg, config_id=config_id, plugin_id=plugin_id, team_id=team_id, order=order, config=config
    )


@pytest.fixture
async def team(pg: asyncpg.Pool) -> int:
    return await create_team(pg)


RunnerFactory = Callable[..., contextlib.AbstractAsyncContextManager[PluginRunner]]


@pytest.fixture
def plugin_runner(pg: asyncpg.Pool, redis: aioredis.Redis, settings: Settings) -> RunnerFactory:
    """`async with plugin_runner(task_timeout=1) as runner:` a started runner, stopped after."""

    @contextlib.asynccontextmanager
    async def running(**overrides: Any) -> AsyncIterator[PluginRunner]:
        kwargs = {k: overrides.pop(k) for k in ("retry_delay_scale",) if k in overrides}
        merged = {"worker_concurrency": 1, "task_timeout": 5.0, **overrides}
        runner = PluginRunner(settings.replace(**merged), pg, redis, uuidt(), log_flush_seconds=0, **kwargs)
        await runner.start()
        try:
            yield runner
        finally:
            await runner.stop()

    return running


def default_event(**changes: Any) -> dict[str, Any]:
    event = {
        "distinct_id": "my_id",
        "ip": "127.0.0.1",
        "site_url": "http://localhost",
        "team_id": TEAM_ID,
        "now": "2020-02-23T02:15:00Z",
        "event": "default event",
        "properties": {},
    }
    event.update(changes)
    return event


async def log_rows(pg: asyncpg.Pool, config_id: int = 39) -> list[asyncpg.Record]:
    return await pg.fetch(
        "SELECT * FROM posthog_pluginlogentry WHERE plugin_config_id = $1 ORDER BY timestamp, message",
        config_id,
    )


async def config_error(pg: asyncpg.Pool, config_id: int = 39) -> Any:
    return await pg.fetchval("SELECT error FROM posthog_pluginconfig WHERE id = $1", config_id)
