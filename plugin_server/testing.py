"""Test helpers for plugin authors: load a plugin through the real sandbox (or V8 isolate) and
call it in a few lines, from plain pytest tests.

    from plugin_server.testing import load_plugin

    def test_drops_internal_users() -> None:
        with load_plugin("my-plugin", {"internal_domain": "example.com"}) as plugin:
            assert plugin.process_event({"event": "x", "properties": {"email": "a@example.com"}}) is None

Or as a pytest fixture, loaded for each test that names it:

    plugin = plugin_fixture("my-plugin", {"internal_domain": "example.com"})

    def test_keeps_customers(plugin: PluginUnderTest) -> None:
        assert plugin.process_event({"event": "x", "properties": {"email": "a@b.c"}}) is not None

The plugin runs in a background event loop, so the calls are plain function calls (an async test
can use `LocalPlugin` directly: `async with LocalPlugin(...) as plugin`). A failing call raises
PluginCallFailed, a plugin that cannot load PluginLoadFailed. Cache and storage are in memory and
can be read after the calls (`plugin.cached(key)`, `plugin.stored(key)`); the plugin's log lines
are in `plugin.logs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import uuid
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from plugin_server.local.host import CapturedEvent, EnqueuedJob
from plugin_server.local.plugin import LocalPlugin, PluginCallFailed, PluginLoadFailed

__all__ = [
    "LocalPlugin",
    "PluginCallFailed",
    "PluginLoadFailed",
    "PluginUnderTest",
    "load_plugin",
    "make_event",
    "plugin_fixture",
]

T = TypeVar("T")


def make_event(event: str = "pageview", **fields: Any) -> dict[str, Any]:
    """An event shaped as the server hands it to plugins; `fields` replace the defaults."""
    base: dict[str, Any] = {
        "distinct_id": "test-user",
        "ip": "127.0.0.1",
        "site_url": "http://localhost",
        "team_id": 1,
        "now": "2024-01-01T00:00:00.000Z",
        "timestamp": "2024-01-01T00:00:00.000Z",
        "uuid": str(uuid.uuid4()),
        "event": event,
        "properties": {},
    }
    base.update(fields)
    return base


class PluginUnderTest:
    """A loaded plugin with blocking calls (see LocalPlugin for the async ones)."""

    def __init__(self, plugin: LocalPlugin, loop: asyncio.AbstractEventLoop) -> None:
        self.plugin = plugin
        self._loop = loop

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def process_event(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        return self._run(self.plugin.process_event(event))

    def process_events(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The events that were not dropped, processed one after the other."""
        results = [self.process_event(event) for event in events]
        return [r for r in results if r is not None]

    def on_event(self, event: Mapping[str, Any]) -> None:
        self._run(self.plugin.on_event(event))

    def export_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        self._run(self.plugin.export_events(events))

    def run_task(self, name: str) -> Any:
        return self._run(self.plugin.run_task(name))

    def run_job(self, name: str, payload: Any = None) -> Any:
        return self._run(self.plugin.run_job(name, payload))

    @property
    def exports(self) -> dict[str, Any]:
        """{"methods": [...], "run_every": [...], "jobs": [...], "metrics": {...}}"""
        return self.plugin.exports

    @property
    def logs(self) -> list[tuple[str, str]]:
        """(level, message) of each console/print line."""
        return self.plugin.logs

    @property
    def log_messages(self) -> list[str]:
        return [message for _level, message in self.plugin.logs]

    @property
    def metrics(self) -> dict[str, float]:
        return self.plugin.metrics

    @property
    def jobs(self) -> list[EnqueuedJob]:
        return self.plugin.jobs

    @property
    def captured(self) -> list[CapturedEvent]:
        return self.plugin.captured

    def stored(self, key: str, default: Any = None) -> Any:
        """What `meta.storage.get(key)` would answer."""
        text = self.plugin.storage.get(key)
        return default if text is None else json.loads(text)

    def cached(self, key: str, default: Any = None) -> Any:
        """What `meta.cache.get(key)` would answer (JSON values decoded)."""
        value = self.plugin.cache.values.get(key)
        if value is None:
            return default
        if isinstance(value, list):
            return list(value)
        try:
            return json.loads(value)
        except ValueError:
            return value


@contextlib.contextmanager
def load_plugin(
    directory: str | os.PathLike[str], config: Mapping[str, Any] | None = None, **options: Any
) -> Iterator[PluginUnderTest]:
    """Load the plugin in `directory` (setup_plugin runs), yield it, tear it down after.
    `options` are LocalPlugin's: attachments, team_id, task_timeout, mmdb_path,
    allow_private_fetch, ..."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="plugin-under-test", daemon=True)
    thread.start()
    plugin = LocalPlugin(directory, config, **options)
    try:
        asyncio.run_coroutine_threadsafe(plugin.__aenter__(), loop).result()
        try:
            yield PluginUnderTest(plugin, loop)
        finally:
            # a failing teardown_plugin raises PluginCallFailed, unless the test already failed
            asyncio.run_coroutine_threadsafe(plugin.__aexit__(*sys.exc_info()), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def plugin_fixture(
    directory: str | os.PathLike[str], config: Mapping[str, Any] | None = None, **options: Any
) -> Any:
    """A pytest fixture (assign it to a module-level name) yielding the plugin loaded with
    `load_plugin(directory, config, **options)`, fresh for each test."""
    import pytest  # only plugin tests need it, not the server

    @pytest.fixture
    def loaded_plugin() -> Iterator[PluginUnderTest]:
        with load_plugin(directory, config, **options) as plugin:
            yield plugin

    return loaded_plugin
