"""Spec §2.12.1: the action cache follows `reload-action` / `drop-action` messages through the
server's reload listener (real Redis), and a full reload every few minutes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import asyncpg
import redis.asyncio as aioredis

from plugin_server.ingestion.actions import ActionCache, ActionCacheRefresh
from plugin_server.services.reload import ReloadListener
from tests.factories import TEAM_ID, insert_row


class NoPluginReloads:
    async def reload_plugins(self) -> None:
        return None


async def _wait_for(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _ids(cache: ActionCache) -> list[int]:
    return [a.id for a in cache.team_actions(TEAM_ID)]


async def test_2_12_1_reload_and_drop_action_messages(
    pg: asyncpg.Pool, redis: aioredis.Redis, team: int
) -> None:
    cache = ActionCache(pg)
    await cache.reload_all()
    assert _ids(cache) == [69]
    listener = ReloadListener(redis, NoPluginReloads(), cache)
    await listener.start()
    try:
        await insert_row(pg, "posthog_action", {"id": 70, "name": "New", "team_id": TEAM_ID})
        await insert_row(pg, "posthog_actionstep", {"id": 914, "action_id": 70, "event": "signup"})
        await redis.publish("reload-action", json.dumps({"teamId": TEAM_ID, "actionId": 70}))
        await _wait_for(lambda: _ids(cache) == [69, 70])
        assert cache.team_actions(TEAM_ID)[1].steps[0].event == "signup"
        await redis.publish("drop-action", json.dumps({"teamId": TEAM_ID, "actionId": 69}))
        await _wait_for(lambda: _ids(cache) == [70])
        await pg.execute("UPDATE posthog_action SET deleted = true WHERE id = 70")
        await redis.publish("reload-action", json.dumps({"teamId": TEAM_ID, "actionId": 70}))
        await _wait_for(lambda: _ids(cache) == [])
    finally:
        await listener.stop()


async def test_2_12_1_periodic_full_reload(pg: asyncpg.Pool, team: int) -> None:
    cache = ActionCache(pg)
    await cache.reload_all()
    refresh = ActionCacheRefresh(cache, interval=0.05)
    await refresh.start()
    task = asyncio.create_task(refresh.run())
    try:
        assert _ids(cache) == [69]
        await insert_row(pg, "posthog_action", {"id": 71, "name": "Later", "team_id": TEAM_ID})
        await _wait_for(lambda: _ids(cache) == [69, 71])
    finally:
        await refresh.stop()
        await asyncio.wait_for(task, 5)


async def test_action_cache_is_shared_with_the_pipeline(pg: asyncpg.Pool, settings, redis, team) -> None:  # type: ignore[no-untyped-def]
    """`action_cache_services` publishes one cache (loaded at start) that the pipeline matches with."""
    from plugin_server.context import AppContext
    from plugin_server.ingestion.actions import ACTIONS, action_cache_services
    from plugin_server.ingestion.api import NoPlugins
    from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
    from plugin_server.ingestion.pipeline import PostgresIngestor
    from tests.ingestion.conftest import ingest, make_event

    ctx = AppContext(settings=settings, instance_id="test", postgres=pg, redis=redis)
    (refresh,) = action_cache_services(ctx)
    await refresh.start()
    cache = ctx.extras[ACTIONS]
    assert _ids(cache) == [69]
    ingestor = PostgresIngestor(pg, settings, NoPlugins(), PostgresDeadLetterQueue(pg), actions=cache)
    await ingestor.start()
    await cache.drop_action(TEAM_ID, 69)
    await ingest(ingestor, make_event("xyz", "abc", {"foo": "bar"}))
    assert await pg.fetchval("SELECT count(*) FROM posthog_action_events") == 0  # dropped: no match
    await cache.reload_action(TEAM_ID, 69)
    await ingest(ingestor, make_event("xyz", "abc", {"foo": "bar"}))
    assert await pg.fetchval("SELECT count(*) FROM posthog_action_events") == 1
    await ingestor.stop()
    await refresh.stop()
