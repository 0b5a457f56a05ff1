"""Scenarios 6.4 (lazy load and retries), 6.5 (loading, chain, capabilities, metrics),
6.6 (console) and 6.9 (teardown, errors, schedule) for Python plugins."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import zipfile
from pathlib import Path

import asyncpg
import pytest

from tests.factories import create_plugin, create_plugin_config
from tests.plugins.conftest import (
    RunnerFactory,
    add_python_plugin,
    config_error,
    default_event,
    log_rows,
    py_source,
)
from tests.waiting import wait_for

PROCESSED = """
def process_event(event, meta):
    event["properties"]["processed"] = True
    return event
"""


def zip_archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("posthog-plugin-abc123/", "")
        for name, text in files.items():
            zf.writestr(f"posthog-plugin-abc123/{name}", text)
    return buffer.getvalue()


def tgz_archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# ---------------------------------------------------------------- 6.4 lazy load and retries
async def test_6_4_60_success_logs_loaded_and_clears_error(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(pg, PROCESSED)
    await pg.execute("""UPDATE posthog_pluginconfig SET error = '{"message": "old"}' WHERE id = 39""")
    async with plugin_runner() as runner:
        await runner.wait_loaded()
        await runner.logs.flush()
        rows = await log_rows(pg)
        assert [(r["source"], r["type"], r["message"]) for r in rows] == [
            ("SYSTEM", "INFO", f"Plugin loaded (instance ID {runner.instance_id}).")
        ]
    assert await config_error(pg) is None


async def test_6_4_63_one_failure_then_success(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        async def setup_plugin(meta):
            if await meta.cache.incr("attempt") == 1:
                raise RuntimeError("first time fails")

        def process_event(event, meta):
            event["properties"]["processed"] = True
            return event
        """,
    )
    async with plugin_runner(retry_delay_scale=0.01) as runner:
        for _ in range(100):
            if runner.loaded[39].exports is not None:
                break
            await asyncio.sleep(0.02)
        [event] = await runner.process_events([default_event()])
        assert event is not None and event["properties"]["processed"] is True
        await runner.logs.flush()
        messages = [r["message"] for r in await log_rows(pg) if r["source"] == "SYSTEM"]
    assert any(m.endswith("Retrying in 3 s.") for m in messages)
    assert sum("Plugin loaded" in m for m in messages) == 1
    assert await pg.fetchval("SELECT enabled FROM posthog_pluginconfig WHERE id = 39") is True


# ---------------------------------------------------------------- 6.5 loading
async def test_6_5_64_archive_plugin_loads_and_sets_capabilities(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    archive = zip_archive({"plugin.json": json.dumps({"main": "main.py"}), "main.py": PROCESSED})
    await create_plugin(pg, plugin_type="custom", archive=archive, name="test-maxmind-plugin")
    await create_plugin_config(pg)
    async with plugin_runner() as runner:
        [event] = await runner.process_events([default_event()])
        assert event is not None and event["properties"]["processed"] is True
        assert event["properties"]["$plugins_succeeded"] == ["test-maxmind-plugin (39)"]
    caps = await pg.fetchval("SELECT capabilities FROM posthog_plugin WHERE id = 60")
    assert caps == {"scheduled_tasks": [], "jobs": [], "methods": ["processEvent"]}


async def test_6_5_tgz_archive_plugin_loads(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    archive = tgz_archive({"plugin.json": json.dumps({"main": "index.py"}), "index.py": PROCESSED})
    await create_plugin(pg, plugin_type="repository", archive=archive)
    await create_plugin_config(pg)
    async with plugin_runner() as runner:
        [event] = await runner.process_events([default_event()])
        assert event is not None and event["properties"]["processed"] is True


async def test_6_5_68_local_plugin_syntax_error_is_recorded(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory, tmp_path: Path
) -> None:
    (tmp_path / "plugin.json").write_text(json.dumps({"main": "main.py"}))
    (tmp_path / "main.py").write_text("def setup_plugin(met\n")
    await create_plugin(pg, plugin_type="local", url=f"file:{tmp_path}")
    await create_plugin_config(pg)
    async with plugin_runner(retry_delay_scale=1000) as runner:
        event = default_event()
        assert await runner.process_events([event]) == [event]
        assert await runner.schedule() == {"runEveryMinute": [], "runEveryHour": [], "runEveryDay": []}
    error = await config_error(pg)
    assert error["name"] == "SyntaxError"


async def test_6_5_local_plugin_may_read_its_own_files(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory, tmp_path: Path
) -> None:
    (tmp_path / "plugin.json").write_text(json.dumps({"main": "main.py"}))
    (tmp_path / "words.txt").write_text("hello")
    (tmp_path / "main.py").write_text(
        f"def process_event(event, meta):\n"
        f"    event['properties']['word'] = open({str(tmp_path / 'words.txt')!r}).read()\n"
        f"    return event\n"
    )
    await create_plugin(pg, plugin_type="local", url=f"file:{tmp_path}")
    await create_plugin_config(pg)
    async with plugin_runner() as runner:
        [event] = await runner.process_events([default_event()])
        assert event is not None and event["properties"]["word"] == "hello"


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (
            {"plugin_type": "custom", "archive": zip_archive({"plugin.json": "{not json", "main.py": ""})},
            "Can not load plugin.json for plugin test-maxmind-plugin ID 60 "
            "(organization ID ca30f2ec-e9a4-4001-bf27-3ef194086068)",
        ),
        (
            {"plugin_type": "custom", "url": "https://github.com/x/y", "is_global": True},
            "Tried using undownloaded remote plugin test-maxmind-plugin ID 60 "
            "(organization ID ca30f2ec-e9a4-4001-bf27-3ef194086068 - global), which is not supported!",
        ),
        (
            {"plugin_type": "custom", "archive": b"this is not a zip"},
            "Could not read archive as .zip or .tgz",
        ),
        (
            {"plugin_type": "custom", "archive": zip_archive({"plugin.json": "{}"})},
            "Could not load index.js for plugin test-maxmind-plugin ID 60 "
            "(organization ID ca30f2ec-e9a4-4001-bf27-3ef194086068)!",
        ),
    ],
    ids=["73_bad_plugin_json", "75_undownloaded_remote", "76_not_a_zip", "missing_entry_file"],
)
async def test_6_5_source_errors_fail_without_retry(
    plugin: dict, message: str, pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await create_plugin(pg, name="test-maxmind-plugin", **plugin)
    await create_plugin_config(pg)
    async with plugin_runner(retry_delay_scale=0.001) as runner:
        await runner.wait_loaded()
        await runner.settle()
        assert runner.loaded[39].attempts == 1 and runner.loaded[39].exports is None
    error = await config_error(pg)
    assert error["message"] == message
    # plain-string errors carry only message and time; an unexpected exception is recorded itself
    assert set(error) == ({"message", "time", "name", "stack"} if "zip" in message else {"message", "time"})


async def test_6_5_74_local_unparsable_plugin_json(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory, tmp_path: Path
) -> None:
    (tmp_path / "plugin.json").write_text("{broken")
    await create_plugin(pg, plugin_type="local", url=f"file:{tmp_path}")
    await create_plugin_config(pg)
    async with plugin_runner() as runner:
        await runner.wait_loaded()
    assert (await config_error(pg))["message"].startswith("Could not load posthog config at ")


async def test_6_5_65_and_69_to_72_chain_outcomes(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            kind = event["event"]
            if kind == "drop":
                return None
            if kind == "team":
                event["team_id"] = 400
                event["properties"]["kept"] = True
            if kind == "throw":
                event["properties"]["mutated_before_throw"] = True
                raise RuntimeError("error thrown in plugin")
            return event

        def on_event(event, meta):
            pass
        """,
    )
    async with plugin_runner() as runner:
        dropped, team_changed, thrown, fine = await runner.process_events(
            [default_event(event=e) for e in ("drop", "team", "throw", "fine")]
        )
        assert dropped is None
        label = "test-maxmind-plugin (39)"
        assert team_changed is not None and team_changed["team_id"] == 2
        assert team_changed["properties"] == {
            "kept": True,
            "$plugins_succeeded": [],
            "$plugins_failed": [label],
            "$plugins_deferred": [label],
        }
        assert thrown is not None and thrown["properties"]["mutated_before_throw"] is True
        assert thrown["properties"]["$plugins_failed"] == [label]
        assert fine is not None and fine["properties"]["$plugins_succeeded"] == [label]
        await runner.settle()
    error = await config_error(pg)
    assert error["name"] == "RuntimeError" and error["message"] == "error thrown in plugin"


async def test_6_5_72_only_on_event_is_deferred(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(pg, "def on_event(event, meta):\n    pass\n")
    async with plugin_runner() as runner:
        [event] = await runner.process_events([default_event()])
        assert event is not None
        assert event["properties"] == {
            "$plugins_succeeded": [],
            "$plugins_failed": [],
            "$plugins_deferred": ["test-maxmind-plugin (39)"],
        }


async def test_6_5_77_chain_runs_in_order(pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory) -> None:
    body = """
def process_event(event, meta):
    event["properties"].setdefault("plugins", []).append({plugin_id})
    return event
"""
    for plugin_id, config_id, order in ((60, 39, 2), (61, 40, 1), (62, 41, 3)):
        await add_python_plugin(
            pg, body.format(plugin_id=plugin_id), plugin_id=plugin_id, config_id=config_id, order=order
        )
    async with plugin_runner(worker_concurrency=2) as runner:
        assert [(c.id, c.config.order) for c in runner.team_chains[2]] == [(40, 1), (39, 2), (41, 3)]
        for _ in range(2):
            results = await runner.process_events([default_event() for _ in range(100)])
            assert all(r is not None and r["properties"]["plugins"] == [61, 60, 62] for r in results)


async def test_6_5_79_capabilities_with_python_names(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            return event

        def random_function(event, meta):
            return event

        def on_event(event, meta):
            pass

        def run_every_hour(meta):
            pass

        jobs = {"x": lambda payload, meta: None}
        """,
    )
    async with plugin_runner() as runner:
        await runner.wait_loaded()
    caps = await pg.fetchval("SELECT capabilities FROM posthog_plugin WHERE id = 60")
    assert caps == {
        "scheduled_tasks": ["runEveryHour"],
        "jobs": ["x"],
        "methods": ["onEvent", "processEvent"],
    }


async def test_6_5_82_reload_replaces_only_changed_configs(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    for plugin_id, config_id, order in ((60, 39, 0), (61, 41, 1), (62, 40, 3), (63, 42, 2)):
        await add_python_plugin(pg, PROCESSED, plugin_id=plugin_id, config_id=config_id, order=order)
    async with plugin_runner() as runner:
        first = dict(runner.loaded)
        await pg.execute("UPDATE posthog_plugin SET updated_at = now() + interval '1 second' WHERE id = 63")
        await pg.execute(
            "UPDATE posthog_pluginconfig SET updated_at = now() + interval '1 second', \"order\" = 3"
            " WHERE id = 41"
        )
        await pg.execute("UPDATE posthog_pluginconfig SET enabled = false WHERE id = 40")
        await add_python_plugin(pg, PROCESSED, plugin_id=64, config_id=43, order=1)
        await runner.reload()
        assert runner.loaded[39] is first[39]
        assert runner.loaded[41] is not first[41] and runner.loaded[42] is not first[42]
        assert [(c.id, c.config.order) for c in runner.team_chains[2]] == [(39, 0), (43, 1), (42, 2), (41, 3)]
        await runner.wait_loaded()
        await runner.settle()
        unloaded = [r for r in await log_rows(pg, 40) if r["message"].startswith("Plugin unloaded")]
        assert len(unloaded) == 1  # removed configs are torn down (recommendation 8.6)


async def test_6_5_85_to_87_metrics_declarations(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(pg, 'metrics = {"metric1": "sum", "metric2": "mAx", "metric3": "MIN"}\n')
    await add_python_plugin(pg, "def export_events(events, meta):\n    pass\n", plugin_id=61, config_id=40)
    await add_python_plugin(pg, 'metrics = {"unsupportedMetric": "avg"}\n', plugin_id=62, config_id=41)
    async with plugin_runner(retry_delay_scale=1000) as runner:
        await runner.wait_loaded()
        assert runner.loaded[41].exports is None
    metrics = {r["id"]: r["metrics"] for r in await pg.fetch("SELECT id, metrics FROM posthog_plugin")}
    assert metrics[60] == {"metric1": "sum", "metric2": "max", "metric3": "min"}
    assert metrics[61] == dict.fromkeys(
        [
            "events_seen",
            "events_delivered_successfully",
            "undelivered_events",
            "retry_errors",
            "other_errors",
        ],
        "sum",
    )
    assert metrics[62] == {}
    error = await config_error(pg, 41)
    assert error["name"] == "IllegalOperationError"
    assert error["message"] == (
        "Only 'sum', 'max', and 'min' are supported as metric types. Invalid types received: avg"
    )
    caps = await pg.fetchval("SELECT capabilities FROM posthog_plugin WHERE id = 61")
    assert caps["methods"] == ["setupPlugin", "teardownPlugin", "exportEvents", "onEvent"]


async def test_6_5_88_to_90_metric_operations(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        metrics = {"metric1": "sum", "metric2": "max", "metric3": "min", "i_should_increment": "sum"}

        def process_event(event, meta):
            m = meta.metrics
            if event["event"] == "ops":
                m["metric1"].increment(100); m["metric1"].increment(10); m["metric1"].increment(-10)
                m["metric2"].max(5); m["metric2"].max(10); m["metric3"].min(4); m["metric3"].min(1)
            elif event["event"] == "wrong_op":
                m["i_should_increment"].max(100)
            elif event["event"] == "not_number":
                m["metric1"].increment("im not a number")
            return event
        """,
    )
    async with plugin_runner() as runner:
        await runner.process_events([default_event(event="ops")])
        expected = {"metric1": 100, "metric2": 10, "metric3": 1}
        await wait_for(lambda: runner.metrics.current(39) == expected)
        await runner.process_events([default_event(event="wrong_op")])
        await runner.settle()
        assert (await config_error(pg))["name"] == "AttributeError"
        await runner.process_events([default_event(event="not_number")])
        await runner.settle()
        error = await config_error(pg)
        assert (error["name"], error["message"]) == (
            "IllegalOperationError",
            "Only numbers are allowed for operations on metrics",
        )


# ---------------------------------------------------------------- 6.6 console
async def test_6_6_92_console_levels_and_formatting(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            for level in ("debug", "log", "info", "warn", "error"):
                write = getattr(meta.console, level)
                write()
                write("number =", 987)
                write(Exception("something"))
                write({1: "ein", 2: "zwei"})
                write([99, 79])
            print("printed", 1)
            return event
        """,
    )
    async with plugin_runner() as runner:
        await runner.process_events([default_event()])
        await asyncio.sleep(0.1)
        await runner.logs.flush()
        rows = [r for r in await log_rows(pg) if r["source"] == "CONSOLE"]
    expected = {"", "number = 987", "Exception: something", '{"1":"ein","2":"zwei"}', "[99,79]"}
    for level in ("DEBUG", "LOG", "INFO", "WARN", "ERROR"):
        got = [r["message"] for r in rows if r["type"] == level and r["message"] != "printed 1"]
        assert sorted(got) == sorted(expected)
    assert [r["type"] for r in rows if r["message"] == "printed 1"] == ["LOG"]


# ---------------------------------------------------------------- 6.9 teardown, errors, schedule
async def test_6_9_109_teardown_error_is_recorded_on_stop(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def teardown_plugin(meta):
            raise RuntimeError("This Happened In The Teardown Palace")
        """,
    )
    async with plugin_runner() as runner:
        await runner.wait_loaded()
        assert await config_error(pg) is None
    assert (await config_error(pg))["message"] == "This Happened In The Teardown Palace"
    messages = [r["message"] for r in await log_rows(pg)]
    assert any(m.startswith("Plugin failed to unload") for m in messages)


async def test_6_9_110_reload_tears_down_old_before_new_reads(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        async def teardown_plugin(meta):
            await meta.storage.set("storage", "tore down")

        async def process_event(event, meta):
            event["properties"]["storage"] = await meta.storage.get("storage", "nope")
            return event
        """,
    )
    async with plugin_runner() as runner:
        [before] = await runner.process_events([default_event()])
        assert before is not None and before["properties"]["storage"] == "nope"
        await pg.execute(
            "UPDATE posthog_pluginconfig SET updated_at = now() + interval '1 second' WHERE id = 39"
        )
        await runner.reload()
        await asyncio.sleep(0.3)
        [after] = await runner.process_events([default_event()])
        assert after is not None and after["properties"]["storage"] == "tore down"


async def test_6_9_111_throwing_plugin_never_stops_events(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg, 'def process_event(event, meta):\n    raise Exception("error thrown in plugin")\n'
    )
    async with plugin_runner() as runner:
        results = await runner.process_events([default_event() for _ in range(4)])
        assert all(r is not None for r in results)
        await runner.settle()
    assert (await config_error(pg))["message"] == "error thrown in plugin"


async def test_6_9_115_and_117_scheduled_task_errors_and_schedule(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(pg, 'def run_every_minute(meta):\n    raise ValueError("task failed")\n')
    async with plugin_runner() as runner:
        assert await runner.schedule() == {"runEveryMinute": [39], "runEveryHour": [], "runEveryDay": []}
        assert await runner.run_scheduled_task(39, "runEveryMinute") is None
        assert (await config_error(pg))["message"] == "task failed"
        assert await runner.run_scheduled_task(39, "runEveryHour") is None
        message = (await config_error(pg))["message"]
        assert message == 'Task "runEveryHour" not found for plugin "test-maxmind-plugin" with config id 39'


async def test_jobs_receive_payload_and_meta(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        async def remember(payload, meta):
            await meta.storage.set("payload", payload)

        jobs = {"remember it": remember}
        """,
    )
    async with plugin_runner() as runner:
        assert (await runner.run_job(39, "remember it", {"a": 1})).ok
        assert (await runner.run_job(39, "remember it", None)).ok is True
        missing = await runner.run_job(39, "nope", None)
        assert not missing.ok and missing.error is not None and "nope" in missing.error["message"]
    assert await pg.fetchval("SELECT value FROM posthog_pluginstorage WHERE key = 'payload'") == "null"


def test_python_marker_selects_the_python_runtime() -> None:
    from plugin_server.plugins.loader import runtime_for

    assert runtime_for("index.ts", py_source("x = 1")) == "python"
    assert runtime_for("index.js", "module.exports = {}") == "js"
    assert runtime_for("dist/main.py", "x = 1") == "python"
