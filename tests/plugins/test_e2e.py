"""End to end: Celery events -> a chain of two Python plugins -> rows in posthog_event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.queues.celery_format import encode_celery_event
from tests.plugins.conftest import add_python_plugin

QUEUE = "posthog-plugins"


def celery_event(seq: int, event: str = "custom event") -> bytes:
    return encode_celery_event(
        f"user-{seq}",
        "127.0.0.1",
        "http://localhost",
        {"event": event, "uuid": f"00000000-0000-0000-0000-{seq:012d}", "properties": {"seq": seq}},
        2,
        "2021-10-28T12:00:01.123456+00:00",
        "2021-10-28T12:00:00.500000Z",
        queue=QUEUE,
    ).encode()


async def wait_until(condition: Callable[[], Any], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_events_pass_through_two_plugins_into_posthog_event(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            event["properties"]["processed"] = "hell yes"
            event["properties"]["upperUuid"] = event["properties"].get("seq", 0) * 10
            return event
        """,
        order=1,
    )
    await add_python_plugin(
        pg,
        """
        async def process_event(event, meta):
            event["properties"]["second"] = event["properties"]["processed"] + "!"
            if event["properties"]["seq"] == 3:
                return None
            return event

        async def on_event(event, meta):
            await meta.storage.set(f"seen-{event['properties']['seq']}", event["event"])
        """,
        plugin_id=61,
        config_id=40,
        order=2,
        name="second",
    )
    async with run_server(settings.replace(task_timeout=5.0)):
        for seq in range(5):
            await redis.lpush(QUEUE, celery_event(seq))

        async def stored() -> bool:
            return await pg.fetchval("SELECT count(*) FROM posthog_event") == 4

        await wait_until(stored, 30)

        async def on_event_ran() -> bool:
            return await pg.fetchval("SELECT count(*) FROM posthog_pluginstorage") == 4

        await wait_until(on_event_ran, 10)
    rows = await pg.fetch("SELECT properties FROM posthog_event ORDER BY (properties->>'seq')::int")
    assert [r["properties"]["seq"] for r in rows] == [0, 1, 2, 4]
    for row in rows:
        props = row["properties"]
        assert props["processed"] == "hell yes"
        assert props["second"] == "hell yes!"
        assert props["upperUuid"] == props["seq"] * 10
        assert props["$plugins_succeeded"] == ["test-maxmind-plugin (39)", "second (40)"]
        assert props["$plugins_deferred"] == ["second (40)"]


async def test_5_2_09_non_object_properties_under_a_plugin_are_dead_lettered_and_the_next_events_flow(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    """Properties that are a string or a list: the plugin fails on them, the event is dead-lettered
    (recommendation 5.2 #9), and the events queued after it are stored."""
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            event["properties"]["processed"] = True
            return event
        """,
    )

    def odd(seq: int, properties: Any) -> bytes:
        return encode_celery_event(
            f"user-{seq}",
            "127.0.0.1",
            "http://localhost",
            {"event": "odd", "uuid": f"00000000-0000-0000-0000-{seq:012d}", "properties": properties},
            2,
            "2021-10-28T12:00:01.123456+00:00",
            "2021-10-28T12:00:00.500000Z",
            queue=QUEUE,
        ).encode()

    async with run_server(settings.replace(task_timeout=5.0)):
        await redis.lpush(QUEUE, celery_event(0), odd(1, "a string"), odd(2, ["x", "y"]), celery_event(3))

        async def settled() -> bool:
            stored = await pg.fetchval("SELECT count(*) FROM posthog_event")
            dead = await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter")
            return bool(stored == 2 and dead == 2)

        await wait_until(settled, 30)
    rows = await pg.fetch("SELECT properties FROM posthog_event ORDER BY (properties->>'seq')::int")
    assert [(r["properties"]["seq"], r["properties"]["processed"]) for r in rows] == [(0, True), (3, True)]
    dead = await pg.fetch("SELECT stage, event FROM plugin_server_dead_letter ORDER BY id")
    assert {r["stage"] for r in dead} == {"plugin_server_ingest_event"}
