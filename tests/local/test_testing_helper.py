"""plugin_server.testing as a plugin's own tests use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin_server.testing import LocalPlugin, PluginCallFailed, PluginLoadFailed, load_plugin, make_event


def _plugin(tmp_path: Path, source: str, main: str = "main.py") -> Path:
    (tmp_path / "plugin.json").write_text(
        json.dumps({"name": "helper", "main": main, "config": [{"key": "n", "default": "2"}]})
    )
    (tmp_path / main).write_text(source)
    return tmp_path


SOURCE = """
from posthog_plugin import Meta, PluginEvent

metrics = {"seen": "sum", "largest": "max"}

def setup_plugin(meta: Meta) -> None:
    meta.global_["n"] = int(meta.config["n"])

async def process_event(event: PluginEvent, meta: Meta) -> PluginEvent:
    await meta.storage.set("last", event["event"])
    await meta.cache.set("count", meta.global_["n"])
    meta.metrics["seen"].increment(1)
    meta.metrics["largest"].max(len(event["event"]))
    meta.posthog.capture("derived", {"from": event["event"]})
    meta.console.info("processed", event["event"])
    return event

def teardown_plugin(meta: Meta) -> None:
    if meta.config.get("fail_teardown"):
        raise RuntimeError("teardown broke")
"""


def test_calls_and_what_the_plugin_left_behind(tmp_path: Path) -> None:
    with load_plugin(_plugin(tmp_path, SOURCE)) as plugin:
        assert plugin.process_events([make_event("a"), make_event("bbb")])[1]["event"] == "bbb"
        assert plugin.stored("last") == "bbb"
        assert plugin.cached("count") == 2  # the plugin.json default
        assert plugin.metrics == {"seen": 2, "largest": 3}
        assert [(c.event, c.properties) for c in plugin.captured] == [
            ("derived", {"from": "a"}),
            ("derived", {"from": "bbb"}),
        ]
        assert plugin.logs == [("INFO", "processed a"), ("INFO", "processed bbb")]
        assert plugin.exports["methods"] == ["setup_plugin", "teardown_plugin", "process_event"]


def test_a_failing_teardown_raises_when_the_block_ends(tmp_path: Path) -> None:
    with pytest.raises(PluginCallFailed, match="teardown_plugin failed: RuntimeError: teardown broke"):
        with load_plugin(_plugin(tmp_path, SOURCE), {"fail_teardown": "yes"}):
            pass


def test_a_failing_test_is_not_hidden_by_a_failing_teardown(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="the test's own failure"):
        with load_plugin(_plugin(tmp_path, SOURCE), {"fail_teardown": "yes"}) as plugin:
            raise AssertionError("the test's own failure")
    assert ("ERROR", "teardown_plugin failed: RuntimeError: teardown broke") in plugin.logs


def test_a_syntax_error_fails_the_load_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadFailed, match="SyntaxError"):
        with load_plugin(_plugin(tmp_path, "def process_event(event, meta)\n")):
            pass


def test_a_plugin_changing_team_id_fails_as_on_the_server(tmp_path: Path) -> None:
    source = "def process_event(event, meta):\n    event['team_id'] = 99\n    return event\n"
    with load_plugin(_plugin(tmp_path, source)) as plugin:
        with pytest.raises(PluginCallFailed, match=r"Plugin tried to change event\.team_id"):
            plugin.process_event(make_event())


async def test_local_plugin_in_an_async_test(tmp_path: Path) -> None:
    source = (
        "export async function processEvent(event, { cache }) {\n"
        "    event.properties.n = await cache.incr('n')\n"
        "    return event\n"
        "}\n"
    )
    async with LocalPlugin(_plugin(tmp_path, source, main="index.js")) as plugin:
        first = await plugin.process_event(make_event())
        second = await plugin.process_event(make_event())
    assert first is not None and second is not None
    assert (first["properties"]["n"], second["properties"]["n"]) == (1, 2)
    assert plugin.runtime_kind == "js"
