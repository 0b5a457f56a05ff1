"""Spec §2.12.1: the action cache follows `reload-action` / `drop-action` messages (real Redis)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import asyncpg
import redis.asyncio as aioredis

from plugin_server.ingestion.action_reloads import ActionReloads
from plugin_server.ingestion.actions import ActionCache
from tests.factories import TEAM_ID, insert_row


async def _wait_for(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_2_12_1_reload_and_drop_action_messages(
    pg: asyncpg.Pool, redis: aioredis.Redis, team: int
) -> None:
    cache = ActionCache(pg)
    service = ActionReloads(redis, cache)
    await service.start()
    assert [a.id for a in cache.team_actions(TEAM_ID)] == [69]
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.subscribed.wait(), 5)
        await insert_row(pg, "posthog_action", {"id": 70, "name": "New", "team_id": TEAM_ID})
        await insert_row(pg, "posthog_actionstep", {"id": 914, "action_id": 70, "event": "signup"})
        await redis.publish("reload-action", json.dumps({"teamId": TEAM_ID, "actionId": 70}))
        await _wait_for(lambda: [a.id for a in cache.team_actions(TEAM_ID)] == [69, 70])
        assert cache.team_actions(TEAM_ID)[1].steps[0].event == "signup"
        await redis.publish("drop-action", json.dumps({"teamId": TEAM_ID, "actionId": 69}))
        await _wait_for(lambda: [a.id for a in cache.team_actions(TEAM_ID)] == [70])
        await pg.execute("UPDATE posthog_action SET deleted = true WHERE id = 70")
        await redis.publish("reload-action", json.dumps({"teamId": TEAM_ID, "actionId": 70}))
        await _wait_for(lambda: cache.team_actions(TEAM_ID) == [])
        await redis.publish("reload-action", "not json")  # ignored, the loop goes on
        await redis.publish("reload-action", json.dumps({"teamId": TEAM_ID, "actionId": 69}))
        await _wait_for(lambda: [a.id for a in cache.team_actions(TEAM_ID)] == [69])
    finally:
        await service.stop()
        await asyncio.wait_for(task, 5)
