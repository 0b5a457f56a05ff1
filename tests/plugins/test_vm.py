"""Scenarios 6.1 (VM creation and method surface) for Python plugins."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.plugins.conftest import RunnerFactory, add_python_plugin, default_event, log_rows
from tests.waiting import wait_for


async def test_6_1_01_empty_source_exports_nothing(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(pg, "")
    async with plugin_runner() as runner:
        await runner.wait_loaded()
        assert runner.loaded[39].exports == {"methods": [], "run_every": [], "jobs": [], "metrics": {}}
        event = default_event()
        assert await runner.process_events([event]) == [event]


async def test_6_1_02_setup_sets_global_used_by_process_event(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def setup_plugin(meta):
            meta.global_["data"] = "haha"

        def process_event(event, meta):
            event["event"] = meta.global_["data"]
            return event
        """,
    )
    async with plugin_runner() as runner:
        [result] = await runner.process_events([default_event()])
        assert result is not None and result["event"] == "haha"


async def test_6_1_03_async_setup_is_awaited_before_events(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        import asyncio

        async def setup_plugin(meta):
            await asyncio.sleep(0.5)
            meta.global_["data"] = "haha"

        async def process_event(event, meta):
            event["event"] = meta.global_["data"]
            return event
        """,
    )
    async with plugin_runner() as runner:
        [result] = await runner.process_events([default_event()])
        assert result is not None and result["event"] == "haha"


async def test_6_1_07_process_event_batch_alone_is_used(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        async def process_event_batch(events, meta):
            for event in events:
                event["event"] = "changed event"
            return events
        """,
    )
    async with plugin_runner() as runner:
        [result] = await runner.process_events([default_event()])
        assert result is not None and result["event"] == "changed event"
        assert runner.loaded[39].exports is not None
        assert runner.loaded[39].exports["methods"] == ["process_event"]


async def test_6_1_09_process_event_wins_over_batch(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            event["event"] = "changed event 1"
            return event

        def process_event_batch(events, meta):
            return [dict(e, event="changed event 2") for e in events]
        """,
    )
    async with plugin_runner() as runner:
        [result] = await runner.process_events([default_event()])
        assert result is not None and result["event"] == "changed event 1"


async def test_6_1_10_no_return_drops_the_event(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            event["event"] = "changed"
        """,
    )
    async with plugin_runner() as runner:
        assert await runner.process_events([default_event(), default_event()]) == [None, None]


async def test_6_1_18_and_31_meta_config_and_attachments(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            event["properties"]["config"] = meta.config
            a = meta.attachments["maxmindMmdb"]
            event["properties"]["attachment"] = [a.content_type, a.file_name, a.contents.decode()]
            return event
        """,
        config={"localhostIP": "94.224.212.175"},
    )
    await pg.execute(
        "INSERT INTO posthog_pluginattachment"
        " (key, content_type, file_name, file_size, contents, plugin_config_id, team_id)"
        " VALUES ('maxmindMmdb', 'application/octet-stream', 'test.txt', 4, 'test'::bytea, 39, 2)"
    )
    async with plugin_runner() as runner:
        [result] = await runner.process_events([default_event()])
        assert result is not None
        assert result["properties"]["config"] == {"localhostIP": "94.224.212.175"}
        assert result["properties"]["attachment"] == ["application/octet-stream", "test.txt", "test"]


async def test_6_1_19_cache_counter_across_calls(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory, redis
) -> None:
    await add_python_plugin(
        pg,
        """
        async def setup_plugin(meta):
            await meta.cache.set("counter", 0)

        async def process_event(event, meta):
            counter = await meta.cache.get("counter", 999)
            meta.cache.set("counter", counter + 1)  # not awaited: still written
            event["event"] = f"counter {counter + 1}"
            return event
        """,
    )

    async def counter_is(value: int) -> bool:
        return bool(await redis.get("@plugin/60/2/counter") == str(value).encode())

    async with plugin_runner() as runner:
        seen = []
        for n in range(1, 4):
            [result] = await runner.process_events([default_event()])
            assert result is not None
            seen.append(result["event"])
            await wait_for(lambda n=n: counter_is(n))  # the un-awaited set lands
        assert seen == ["counter 1", "counter 2", "counter 3"]
        # same key layout and JSON as the original
        assert await redis.get("@plugin/60/2/counter") == b"3"


async def test_6_1_20_storage_get_set_delete(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        async def setup_plugin(meta):
            await meta.storage.set("counter", -1)
            assert await meta.storage.get("counter") == -1
            await meta.storage.set("counter", None)
            await meta.storage.set("gone", 10)
            await meta.storage.delete("gone")

        async def process_event(event, meta):
            counter = await meta.storage.get("counter", 999)
            counter = (counter or 0) + 1
            await meta.storage.set("counter", counter)
            event["properties"]["counter"] = counter
            event["properties"]["gone"] = await meta.storage.get("gone", "default")
            return event
        """,
    )
    async with plugin_runner() as runner:
        values = []
        for _ in range(3):
            [result] = await runner.process_events([default_event()])
            assert result is not None
            values.append((result["properties"]["counter"], result["properties"]["gone"]))
        assert values == [(1, "default"), (2, "default"), (3, "default")]
    assert await pg.fetchval("SELECT value FROM posthog_pluginstorage WHERE key = 'counter'") == "3"


async def test_6_1_21_cache_expire(pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory) -> None:
    await add_python_plugin(
        pg,
        """
        async def process_event(event, meta):
            counter = await meta.cache.get("counter", 0)
            await meta.cache.set("counter", counter + 1)
            await meta.cache.expire("counter", 1)
            event["properties"]["counter"] = counter + 1
            return event
        """,
    )
    async with plugin_runner() as runner:
        got = []
        for pause in (0, 0, 1.2):
            await asyncio.sleep(pause)
            [result] = await runner.process_events([default_event()])
            assert result is not None
            got.append(result["properties"]["counter"])
        assert got == [1, 2, 1]


async def test_6_1_23_to_25_cache_incr_and_lists(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        async def process_event(event, meta):
            c = meta.cache
            await c.set("n", 0)
            incs = [await c.incr("n") for _ in range(3)]
            await c.lpush("mylist", "a string")
            await c.lpush("mylist", ["an", "array"])
            first = await c.lrange("mylist", 0, 3)
            length = await c.llen("mylist")
            await c.expire("mylist", 0)
            after = await c.lrange("mylist", 0, 3)
            await c.lpush("mylist2", ["1", "2", "3"])
            popped = await c.lpop("mylist2", 1)
            removed = await c.lrem("mylist2", 1, "2")
            rest = await c.lrange("mylist2", 0, -1)
            event["properties"].update(incs=incs, first=first, length=length, after=after,
                                       popped=popped, removed=removed, rest=rest)
            return event
        """,
    )
    async with plugin_runner() as runner:
        [result] = await runner.process_events([default_event()])
        assert result is not None
        p = result["properties"]
        assert p["incs"] == [1, 2, 3]
        assert sorted(p["first"]) == ["a string", "an", "array"] and p["length"] == 3
        assert p["after"] == []
        assert p["popped"] == ["3"] and p["removed"] == 1 and p["rest"] == ["1"]


async def test_6_1_26_console_log_writes_a_log_row(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            meta.console.log(event["event"])
            return event
        """,
    )
    async with plugin_runner() as runner:
        await runner.process_events([default_event(event="logged event")])
        await asyncio.sleep(0.1)
        await runner.logs.flush()
        rows = [r for r in await log_rows(pg) if r["source"] == "CONSOLE"]
        assert len(rows) == 1
        row = rows[0]
        assert (row["message"], row["plugin_id"], row["team_id"], row["type"]) == (
            "logged event",
            60,
            2,
            "LOG",
        )
        assert row["id"] and str(row["instance_id"]) == runner.instance_id and row["timestamp"]


async def test_6_1_32_33_scheduled_tasks(pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory) -> None:
    await add_python_plugin(
        pg,
        """
        def run_every_minute(meta):
            return "minute"

        run_every_hour = False

        async def run_every_day(meta):
            return 4
        """,
    )
    async with plugin_runner() as runner:
        assert await runner.schedule() == {"runEveryMinute": [39], "runEveryHour": [], "runEveryDay": [39]}
        assert await runner.run_scheduled_task(39, "runEveryMinute") == "minute"
        assert await runner.run_scheduled_task(39, "runEveryDay") == 4
        caps = await pg.fetchval("SELECT capabilities FROM posthog_plugin WHERE id = 60")
        assert caps == {"scheduled_tasks": ["runEveryMinute", "runEveryDay"], "jobs": [], "methods": []}
