"""Spec plugins.md §6.1 and §6.3 in their original JS form: VM creation, module formats, meta, timeouts."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.plugins.js.vm import CallFailed, PluginLoadError
from plugin_server.plugins.runner import PluginRunner
from tests.js.conftest import PLUGIN_LABEL, Loader, config_error, default_event


async def test_6_1_01_empty_source_exports_nothing(make_vm: Loader) -> None:
    vm = await make_vm("")
    assert vm.exports.methods == ()
    assert vm.exports.schedule == () and vm.exports.jobs == ()


async def test_6_1_02_setup_sets_global_used_by_process_event(load_plugin: Loader) -> None:
    plugin = await load_plugin("""
        function setupPlugin (meta) { meta.global.data = 'haha' }
        function processEvent (event, meta) { event.event = meta.global.data; return event }
    """)
    processed = await plugin.process_event(default_event())
    assert processed is not None and processed["event"] == "haha"


async def test_6_1_03_async_setup_is_awaited(load_plugin: Loader) -> None:
    plugin = await load_plugin("""
        async function setupPlugin (meta) {
            await new Promise(resolve => __jestSetTimeout(resolve, 500))
            meta.global.data = 'haha'
        }
        function processEvent (event, meta) { event.event = meta.global.data; return event }
    """)
    assert (await plugin.vm.call_method("processEvent", default_event()))["event"] == "haha"


@pytest.mark.parametrize(
    "source",
    [
        "function processEventBatch (events) { return events.map(e => { e.event = 'changed event'; return e }) }",
        "async function processEventBatch (events) { return events.map(e => { e.event = 'changed event'; return e }) }",
        """function processEvent (e) { e.event = 'changed event'; return e }
           function processEventBatch (events) { return events.map(e => { e.event = 'changed event 2'; return e }) }""",
    ],
)
async def test_6_1_07_to_09_process_event_batch_shim(make_vm: Loader, source: str) -> None:
    vm = await make_vm(source)
    assert vm.exports.methods == ("processEvent",)
    assert (await vm.call_method("processEvent", default_event()))["event"] == "changed event"


async def test_6_1_10_no_return_drops_the_event(load_plugin: Loader) -> None:
    plugin = await load_plugin("function processEvent (event) { event.event = 'changed' }")
    assert await plugin.process_event(default_event()) is None


@pytest.mark.parametrize(
    "source",
    [
        "module.exports = { processEvent: (e) => { e.event = 'x'; return e } }",
        "module.exports.processEvent = (e) => { e.event = 'x'; return e }",
        "exports = { processEvent: (e) => { e.event = 'x'; return e } }",
        "exports.processEvent = (e) => { e.event = 'x'; return e }",
        "export const processEvent = async (e) => { e.event = 'x'; return e }",
        "export default { processEvent: (e) => { e.event = 'x'; return e } }",
        "export function processEvent (e) { e.event = 'x'; return e }",
        "var processEvent = function (e) { e.event = 'x'; return e }",
    ],
    ids=[
        "module.exports=",
        "module.exports.x",
        "exports=",
        "exports.x",
        "esm const",
        "esm default",
        "esm function",
        "top-level var",
    ],
)
async def test_6_1_12_to_17_module_formats(make_vm: Loader, source: str) -> None:
    vm = await make_vm(source)
    assert (await vm.call_method("processEvent", default_event()))["event"] == "x"


async def test_1_3_top_level_const_is_not_an_export(make_vm: Loader) -> None:
    vm = await make_vm("const processEvent = (e) => e")
    assert vm.exports.methods == ()


async def test_6_1_18_and_31_config_and_attachments(make_vm: Loader) -> None:
    vm = await make_vm("""
        export function processEvent (event, { config, attachments }) {
            event.properties = { config, file: attachments.maxmindMmdb.file_name,
                                 contents: attachments.maxmindMmdb.contents.toString(),
                                 isBuffer: Buffer.isBuffer(attachments.maxmindMmdb.contents) }
            return event
        }
    """)
    props = (await vm.call_method("processEvent", default_event()))["properties"]
    assert props == {
        "config": {"localhostIP": "94.224.212.175"},
        "file": "test.txt",
        "contents": "test",
        "isBuffer": True,
    }


async def test_6_1_19_cache_counter_in_redis(load_plugin: Loader, redis: aioredis.Redis) -> None:
    plugin = await load_plugin("""
        async function setupPlugin (meta) { await meta.cache.set('counter', 0) }
        async function processEvent (event, meta) {
            const counter = await meta.cache.get('counter', 999)
            meta.cache.set('counter', counter + 1)
            event.event = 'counter ' + (counter + 1)
            return event
        }
    """)
    seen = [(await plugin.vm.call_method("processEvent", default_event()))["event"] for _ in range(3)]
    assert seen == ["counter 1", "counter 2", "counter 3"]
    assert await redis.get("@plugin/60/2/counter") == b"3"


async def test_8_01_cache_get_of_missing_key_returns_default(make_vm: Loader) -> None:
    """Recommendation (spec §8 item 1): a missing key gives the default, not null."""
    vm = await make_vm(
        "export async function processEvent (e, { cache }) { e.event = await cache.get('nope', 'dflt'); return e }"
    )
    assert (await vm.call_method("processEvent", default_event()))["event"] == "dflt"


async def test_6_1_20_storage_in_postgres(load_plugin: Loader, pg: asyncpg.Pool) -> None:
    plugin = await load_plugin("""
        async function setupPlugin ({ storage }) {
            await storage.set('counter', -1)
            const c = await storage.get('counter')
            if (c !== -1) throw new Error('not -1')
            await storage.set('counter', null)
            await storage.set('gone', 10)
            await storage.del('gone')
        }
        async function processEvent (event, { storage }) {
            const counter = await storage.get('counter', 999)
            await storage.set('counter', counter + 1)
            event.properties = { counter: counter + 1, gone: await storage.get('gone', null) }
            return event
        }
    """)
    out = [(await plugin.vm.call_method("processEvent", default_event()))["properties"] for _ in range(3)]
    assert [p["counter"] for p in out] == [1, 2, 3] and out[0]["gone"] is None
    assert (
        await pg.fetchval(
            "SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = 39 AND key = 'counter'"
        )
        == "3"
    )


async def test_4_5_cursor_counts_atomically(make_vm: Loader) -> None:
    vm = await make_vm("""
        export async function processEvent (e, { utils, storage }) {
            await utils.cursor.init('c', 5)
            await utils.cursor.init('c', 100)
            const a = await utils.cursor.increment('c')
            const b = await utils.cursor.increment('c', 0)
            e.properties = { a, b, stored: await storage.get('c') }
            return e
        }
    """)
    assert (await vm.call_method("processEvent", default_event()))["properties"] == {
        "a": 6,
        "b": 7,
        "stored": 7,
    }


async def test_6_1_24_25_cache_lists(make_vm: Loader) -> None:
    vm = await make_vm("""
        export async function processEvent (e, { cache }) {
            await cache.lpush('mylist', 'a string')
            await cache.lpush('mylist', ['an', 'array'])
            const all = await cache.lrange('mylist', 0, 3)
            const len = await cache.llen('mylist')
            await cache.expire('mylist', 0)
            const after = await cache.lrange('mylist', 0, 3)
            await cache.lpush('mylist2', ['1', '2', '3'])
            const popped = await cache.lpop('mylist2', 1)
            const removed = await cache.lrem('mylist2', 1, '2')
            const rest = await cache.lrange('mylist2', 0, 3)
            let error = null
            try { await cache.lrange('x', 'a', 1) } catch (err) { error = err.message }
            e.properties = { all, len, after, popped, removed, rest, error }
            return e
        }
    """)
    props = (await vm.call_method("processEvent", default_event()))["properties"]
    assert sorted(props["all"]) == ["a string", "an", "array"] and props["len"] == 3 and props["after"] == []
    assert props["popped"] == ["3"] and props["removed"] == 1 and props["rest"] == ["1"]
    assert props["error"] == "cache.lrange expects a number for the start and end indexes"


async def test_6_1_26_console_log_writes_a_log_entry(
    make_vm: Loader, pg: asyncpg.Pool, runner: PluginRunner
) -> None:
    vm = await make_vm("export async function processEvent (e) { await console.log(e.event); return e }")
    await vm.call_method("processEvent", default_event(event="logged event"))
    await runner.logs.flush()
    row = await pg.fetchrow("SELECT * FROM posthog_pluginlogentry")
    assert row is not None
    assert (
        row["message"],
        row["plugin_config_id"],
        row["plugin_id"],
        row["team_id"],
        row["source"],
        row["type"],
    ) == ("logged event", 39, 60, 2, "CONSOLE", "LOG")
    assert row["id"] and row["instance_id"] and row["timestamp"]


async def test_6_1_32_33_scheduled_tasks(make_vm: Loader) -> None:
    vm = await make_vm("""
        function runEveryMinute () { return 'minute' }
        function runEveryHour () {}
        function runEveryDay () {}
    """)
    assert vm.exports.schedule == ("runEveryMinute", "runEveryHour", "runEveryDay")
    assert await vm.run_task("runEveryMinute") == "minute"
    vm2 = await make_vm(
        "export const runEveryMinute = () => 1; export const runEveryHour = false; export const runEveryDay = {some: 'object'}"
    )
    assert vm2.exports.schedule == ("runEveryMinute",)


async def test_6_5_66_meta_has_nine_keys(load_plugin: Loader) -> None:
    plugin = await load_plugin("""
        function setupPlugin ({ global }) { global.key = 'value' }
        function processEvent (event, meta) { event.properties = { keys: Object.keys(meta).sort(), global: meta.global }; return event }
    """)
    props = (await plugin.vm.call_method("processEvent", default_event()))["properties"]
    assert props["keys"] == sorted(
        ["cache", "config", "attachments", "global", "storage", "geoip", "jobs", "metrics", "utils"]
    )
    assert props["global"] == {"key": "value"}


async def test_6_5_85_87_metrics_declaration(make_vm: Loader) -> None:
    vm = await make_vm("export const metrics = { metric1: 'sum', metric2: 'mAx', metric3: 'MIN' }")
    assert vm.exports.metrics == {"metric1": "sum", "metric2": "max", "metric3": "min"}
    with pytest.raises(
        PluginLoadError,
        match=r"Only 'sum', 'max', and 'min' are supported as metric types. Invalid types received: avg",
    ):
        await make_vm("export const metrics = { unsupportedMetric: 'avg' }")


async def test_6_5_88_to_90_metric_operations(make_vm: Loader, runner: PluginRunner) -> None:
    vm = await make_vm("""
        export const metrics = { metric1: 'sum', metric2: 'max', metric3: 'min' }
        export function processEvent (e, { metrics }) {
            metrics.metric1.increment(100); metrics.metric1.increment(10); metrics.metric1.increment(-10)
            metrics.metric2.max(5); metrics.metric2.max(10); metrics.metric3.min(4); metrics.metric3.min(1)
            return e
        }
        export function runEveryMinute ({ metrics }) { metrics.metric1.max(100) }
        export function runEveryHour ({ metrics }) { metrics.metric1.increment('im not a number') }
    """)
    await vm.call_method("processEvent", default_event())
    expected = {"metric1": 100, "metric2": 10, "metric3": 1}
    for _ in range(50):  # metric updates are notifications: they land after the call returns
        if runner.metrics.current(39) == expected:
            break
        await asyncio.sleep(0.01)
    assert runner.metrics.current(39) == expected
    with pytest.raises(CallFailed) as wrong_op:
        await vm.run_task("runEveryMinute")
    assert (wrong_op.value.error.name, wrong_op.value.error.message) == (
        "TypeError",
        "metrics.metric1.max is not a function",
    )
    with pytest.raises(CallFailed) as not_number:
        await vm.run_task("runEveryHour")
    assert not_number.value.error.name == "IllegalOperationError"
    assert not_number.value.error.message == "Only numbers are allowed for operations on metrics"


async def test_6_5_69_changing_team_id_fails_the_call(load_plugin: Loader, pg: asyncpg.Pool) -> None:
    plugin = await load_plugin("function processEvent (event) { event.team_id = 400; return event }")
    processed = await plugin.process_event(default_event(team_id=2))
    assert processed is not None and processed["team_id"] == 2
    assert processed["properties"]["$plugins_failed"] == [PLUGIN_LABEL]
    error = await config_error(pg)
    assert (error["name"], error["message"]) == (
        "IllegalOperationError",
        "Plugin tried to change event.team_id",
    )
    assert error["event"]["team_id"] == 2


async def test_6_5_67_syntax_error_fails_the_load(
    load_plugin: Loader, pg: asyncpg.Pool, runner: PluginRunner
) -> None:
    plugin = await load_plugin("function setupPlugin (met")
    assert plugin.loaded.exports is None
    error = await config_error(pg)
    assert error["name"] == "SyntaxError"
    assert ': Unexpected token, expected ","' in error["message"]
    await runner.logs.flush()
    system_errors = await pg.fetch(
        "SELECT message FROM posthog_pluginlogentry WHERE source = 'SYSTEM' AND type = 'ERROR'"
    )
    assert sorted(r["message"] for r in system_errors) == sorted(
        [error["message"], f"Plugin failed to load (instance ID {runner.instance_id}). Retrying in 3 s."]
    )


async def test_6_3_47_loop_guard_names_line_and_column(make_vm: Loader) -> None:
    vm = await make_vm(
        "export async function processEvent (event) {\n    const a = 1\n                while(1) {}\n}",
        task_timeout=1,
    )
    started = time.monotonic()
    with pytest.raises(CallFailed) as failed:
        await vm.call_method("processEvent", default_event())
    assert time.monotonic() - started >= 1
    assert failed.value.error.message == "Script execution timed out after looping for 1 second on line 3:16"


async def test_6_3_49_loop_in_then_callback(make_vm: Loader) -> None:
    vm = await make_vm(
        "export async function processEvent (event) {\n    const a = 1\n"
        "                await Promise.resolve().then(() => { while(1) {}; })\n}",
        task_timeout=1,
    )
    with pytest.raises(CallFailed) as failed:
        await vm.call_method("processEvent", default_event())
    assert failed.value.error.message == "Script execution timed out after looping for 1 second on line 3:53"


@pytest.mark.parametrize("shadow", ["", "const __asyncGuard = (a) => a"])
async def test_6_3_56_57_awaits_time_out_with_timeout_error(make_vm: Loader, shadow: str) -> None:
    vm = await make_vm(
        f"""export async function processEvent (event) {{
            {shadow}
            const wait = () => new Promise(resolve => __jestSetTimeout(resolve, 800))
            await wait(); await wait(); await wait(); await wait()
            return event
        }}""",
        task_timeout=1,
    )
    started = time.monotonic()
    with pytest.raises(CallFailed) as failed:
        await vm.call_method("processEvent", default_event())
    assert 1 <= time.monotonic() - started < 4
    error = failed.value.error
    assert (error.name, error.message, error.caller) == (
        "TimeoutError",
        "Script execution timed out after promise waited for 1 second",
        "processEvent",
    )


async def test_6_9_109_teardown_error_is_recorded(
    load_plugin: Loader, pg: asyncpg.Pool, runner: PluginRunner
) -> None:
    plugin = await load_plugin(
        "export function teardownPlugin () { throw new Error('This Happened In The Teardown Palace') }"
    )
    assert plugin.loaded.exports is not None
    assert await pg.fetchval("SELECT error FROM posthog_pluginconfig WHERE id = 39") is None
    await runner.stop()
    error = await pg.fetchval("SELECT error->>'message' FROM posthog_pluginconfig WHERE id = 39")
    assert error == "This Happened In The Teardown Palace"
    messages = [
        r["message"]
        for r in await pg.fetch("SELECT message FROM posthog_pluginlogentry WHERE source = 'SYSTEM'")
    ]
    assert any(m.startswith("Plugin failed to unload") for m in messages)


@pytest.mark.parametrize(
    "body",
    [
        "void new Promise(() => { throw new Error('error thrown in plugin') })",
        "void new Promise((_, reject) => { reject(new Error('error thrown in plugin')) })",
        "Promise.reject(new Error('error thrown in plugin'))",
    ],
)
async def test_6_9_111_to_113_unhandled_rejections_are_attributed(
    load_plugin: Loader, pg: asyncpg.Pool, body: str
) -> None:
    plugin = await load_plugin(f"export function processEvent (event) {{ {body}; return event }}")
    processed = await plugin.process_event(default_event())
    assert processed is not None and processed["properties"]["$plugins_failed"] == []
    assert (await config_error(pg))["message"] == "error thrown in plugin"


async def test_3_2_mutations_before_a_failure_survive(load_plugin: Loader, pg: asyncpg.Pool) -> None:
    plugin = await load_plugin("""
        function processEvent (event) { event.properties.processed = 'hell yes'; return meta.nope }
    """)
    processed = await plugin.process_event(default_event())
    assert processed is not None and processed["properties"]["processed"] == "hell yes"
    assert processed["properties"]["$plugins_failed"] == [PLUGIN_LABEL]
    assert (await config_error(pg))["name"] == "ReferenceError"
