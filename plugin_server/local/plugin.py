"""One plugin loaded from a folder exactly as the server loads it (the same loader, the real
Python sandbox or V8 isolate, the same guard and limits), with its host services answered
locally: cache and storage in memory (or on the Redis / Postgres given), logs to a callback.

    async with LocalPlugin("my-plugin", {"greeting": "hi"}) as plugin:
        event = await plugin.process_event({"event": "pageview", "properties": {}})
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import asyncpg
import redis.asyncio as aioredis

from plugin_server.local.host import CapturedEvent, EnqueuedJob, LocalHost
from plugin_server.local.memory_services import MemoryCache, register_memory_cache, register_memory_storage
from plugin_server.plugins.capabilities import js_task_name, python_task_name
from plugin_server.plugins.host_services import HostServices, PluginContext
from plugin_server.plugins.js.sandbox_runtime import JSRuntime
from plugin_server.plugins.js.transpile import Transpiler
from plugin_server.plugins.loader import PluginSource, SourceNotFound, load_plugin_source
from plugin_server.plugins.meta_services import register_cache_services, register_storage_services
from plugin_server.plugins.pool import CallOutcome, SandboxPool
from plugin_server.plugins.registry import Attachment, Plugin, PluginConfig
from plugin_server.plugins.runtime import PluginRuntime, PythonSandboxRuntime, RuntimeSpec
from plugin_server.plugins.service import register_host_bridge
from plugin_server.services.export_events import ExportBuffer, ExportSettings
from plugin_server.services.fetch import PluginFetch
from plugin_server.services.geoip import GeoIp

TASK_TIMEOUT_FACTOR = 10  # as the server: scheduled tasks and jobs get 10 x TASK_TIMEOUT
PLUGIN_ID = 1
SNAPSHOT = "$snapshot"

LogHandler = Callable[[str, str], None]


class PluginLoadFailed(Exception):
    """The plugin's code could not be found, compiled or set up."""


class PluginCallFailed(Exception):
    """A plugin function raised (or was stopped by a limit); `error` is what the server would
    record: name, message, stack."""

    def __init__(self, method: str, error: Mapping[str, Any]) -> None:
        self.method = method
        self.error = dict(error)
        name = self.error.get("name") or "Error"
        super().__init__(f"{method} failed: {name}: {self.error.get('message', '')}")

    @property
    def retry(self) -> bool:
        """Whether the server would retry the call later (a RetryError)."""
        return bool(self.error.get("retry")) or self.error.get("name") == "RetryError"


def read_manifest(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, "plugin.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise PluginLoadFailed(f"cannot read {path}: {exc}") from None
    return manifest if isinstance(manifest, dict) else {}


def config_defaults(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The `default` of each plugin.json config field, as the PostHog app fills them in."""
    fields = manifest.get("config")
    if not isinstance(fields, list):
        return {}
    return {
        f["key"]: f["default"]
        for f in fields
        if isinstance(f, dict) and isinstance(f.get("key"), str) and "default" in f
    }


class LocalPlugin:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        config: Mapping[str, Any] | None = None,
        *,
        attachments: Mapping[str, str | os.PathLike[str]] | None = None,
        team_id: int = 1,
        plugin_config_id: int = 1,
        task_timeout: float = 30.0,
        memory_limit_mb: int = 512,
        redis: aioredis.Redis | None = None,
        pg: asyncpg.Pool | None = None,
        mmdb_path: str | None = None,
        allow_private_fetch: bool = False,
        on_log: LogHandler | None = None,
    ) -> None:
        self.directory = os.path.realpath(os.fspath(directory))
        self.manifest = read_manifest(self.directory)
        self.name = str(self.manifest.get("name") or os.path.basename(self.directory))
        self.config = {**config_defaults(self.manifest), **(config or {})}
        self.attachment_paths = {k: os.fspath(v) for k, v in (attachments or {}).items()}
        self.team_id = team_id
        self.plugin_config_id = plugin_config_id
        self.task_timeout = task_timeout
        self.memory_limit_mb = memory_limit_mb
        self.on_log = on_log
        self.logs: list[tuple[str, str]] = []  # (level, message) in order
        self.metrics: dict[str, float] = {}
        self.cache = MemoryCache()
        self.storage: dict[str, str] = {}  # key -> JSON text
        self.services = HostServices()
        register_memory_cache(self.services, self.cache)
        register_memory_storage(self.services, self.storage)
        if redis is not None:
            register_cache_services(self.services, redis)
        if pg is not None:
            register_storage_services(self.services, pg)
        self.services.register("console", self._console)
        self.services.register("metrics.update", self._metric)
        geoip = GeoIp(disabled=False, file_path=mmdb_path) if mmdb_path else None
        self.host = LocalHost(PluginFetch(allow_private=allow_private_fetch), geoip)
        register_host_bridge(self.services, self.host)
        self.runtime_kind = ""
        self.exports: dict[str, Any] = {}
        self._runtime: PluginRuntime | None = None
        self._pool: SandboxPool | None = None
        self._transpiler: Transpiler | None = None

    @property
    def jobs(self) -> list[EnqueuedJob]:
        """Jobs the plugin enqueued (`meta.jobs.x(payload).run_now()`); not run by themselves."""
        return self.host.jobs

    @property
    def captured(self) -> list[CapturedEvent]:
        """Events the plugin sent with `meta.posthog.capture`."""
        return self.host.captured

    def has(self, method: str) -> bool:
        return method in self.exports.get("methods", [])

    # ------------------------------------------------------------------ host services
    def _console(self, ctx: PluginContext, level: str, message: str) -> None:
        self.logs.append((level, message))
        if self.on_log is not None:
            self.on_log(level, message)

    def _metric(self, ctx: PluginContext, name: str, kind: str, value: float) -> None:
        current = self.metrics.get(name)
        if current is None:
            self.metrics[name] = value
        elif kind == "max":
            self.metrics[name] = max(current, value)
        elif kind == "min":
            self.metrics[name] = min(current, value)
        else:
            self.metrics[name] = current + value

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.close()
        except PluginCallFailed:
            if exc is None:  # else the error in flight matters more (the failure is in `logs`)
                raise

    def _read_plugin(self) -> tuple[Plugin, PluginSource, dict[str, Attachment]]:
        """The plugin's record, code and attachments, read from disk as the server reads them."""
        if not os.path.isdir(self.directory):
            raise PluginLoadFailed(f"{self.directory} is not a folder")
        plugin = Plugin(
            id=PLUGIN_ID,
            name=self.name,
            url=f"file:{self.directory}",
            plugin_type="local",
            is_global=False,
            organization_id="local",
            tag=None,
            archive=None,
            source=None,
            capabilities={},
            metrics=None,
            public_jobs=None,
            updated_at=None,
        )
        try:
            source = load_plugin_source(plugin, self.directory)
            attachments = {key: _attachment(key, path) for key, path in self.attachment_paths.items()}
        except SourceNotFound as exc:
            raise PluginLoadFailed(str(exc)) from None
        except OSError as exc:
            raise PluginLoadFailed(f"{type(exc).__name__}: {exc}") from None
        return plugin, source, attachments

    async def start(self) -> None:
        """Load the code and run setup_plugin; raises PluginLoadFailed with the reason."""
        plugin, source, attachments = self._read_plugin()
        config = PluginConfig(
            id=self.plugin_config_id,
            team_id=self.team_id,
            plugin_id=PLUGIN_ID,
            enabled=True,
            order=0,
            config=self.config,
            error=None,
            updated_at=None,
            plugin=plugin,
            attachments=attachments,
        )
        context = PluginContext(self.plugin_config_id, PLUGIN_ID, self.team_id, self.name, "local")
        spec = RuntimeSpec(f"{self.plugin_config_id}:1", config, source, context, self.task_timeout)
        await self.host.start()
        self.runtime_kind = source.runtime
        if source.runtime == "python":
            self._pool = SandboxPool(
                1, self.services, memory_limit_mb=self.memory_limit_mb, stuck_after=self.task_timeout + 5.0
            )
            await self._pool.start()
            self._runtime = PythonSandboxRuntime(self._pool, spec)
        else:
            self._transpiler = Transpiler()
            self._runtime = JSRuntime(spec, self.services, self._transpiler)
        outcome = await self._runtime.load()
        if not outcome.ok:
            error = outcome.error or {}
            raise PluginLoadFailed(f"{error.get('name') or 'Error'}: {error.get('message', '')}")
        self.exports = outcome.value or {}

    async def close(self) -> None:
        """Run teardown_plugin and stop everything; then raise PluginCallFailed if teardown
        failed (the failure is also added to `logs`, as the server logs it)."""
        runtime, self._runtime = self._runtime, None
        failure: PluginCallFailed | None = None
        try:
            if runtime is not None:
                if self.exports:
                    outcome = await runtime.teardown(self.task_timeout)
                    if not outcome.ok:
                        failure = PluginCallFailed("teardown_plugin", outcome.error or {})
                        self.logs.append(("ERROR", str(failure)))
                await runtime.close()
        finally:
            if self._pool is not None:
                await self._pool.stop()
            if self._transpiler is not None:
                self._transpiler.close()
            await self.host.stop()
            self.exports = {}
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ calls
    async def _call(self, method: str, args: list[Any], time_limit: float | None = None) -> CallOutcome:
        if self._runtime is None:
            raise RuntimeError("the plugin is not loaded: use `async with LocalPlugin(...)` or start()")
        [outcome] = await self._runtime.call(method, [args], time_limit or self.task_timeout)
        if not outcome.ok:
            raise PluginCallFailed(method, outcome.error or {})
        return outcome

    def complete_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The event with the fields every ingested event has when it reaches a plugin."""
        full = dict(event)
        full.setdefault("team_id", self.team_id)
        full.setdefault("properties", {})
        return full

    async def process_event(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        """The event as the plugin returned it, None when the plugin dropped it."""
        event = self.complete_event(event)
        if not self.has("process_event") or event.get("event") == SNAPSHOT:
            return event  # the server never hands session recordings to process_event
        outcome = await self._call("process_event", [event])
        result = outcome.value
        if result is not None and result.get("team_id") != event["team_id"]:
            error = {"name": "IllegalOperationError", "message": "Plugin tried to change event.team_id"}
            raise PluginCallFailed("process_event", error)
        return result

    async def on_event(self, event: Mapping[str, Any]) -> None:
        """`on_event`, or `on_snapshot` for a session recording event, as the server calls them
        after ingestion."""
        method = "on_snapshot" if event.get("event") == SNAPSHOT else "on_event"
        if self.has(method):
            await self._call(method, [self.complete_event(event)])

    async def export_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        """One batch, as the server's export buffer hands it over; a RetryError raises
        PluginCallFailed with `retry` set."""
        if self.has("export_events") and events:
            await self._call("export_events", [[self.complete_event(e) for e in events]])

    async def export_buffered(self, events: Sequence[Mapping[str, Any]]) -> None:
        """The events through the server's export buffer: batches by exportEventsBufferBytes,
        without exportEventsToIgnore, all flushed before returning. The first failing batch
        raises PluginCallFailed once every batch was tried."""
        if not self.has("export_events"):
            return
        failures: list[PluginCallFailed] = []

        async def export(batch: list[Any]) -> None:
            try:
                await self.export_events(batch)
            except PluginCallFailed as exc:
                failures.append(exc)

        buffer = ExportBuffer(self.plugin_config_id, ExportSettings.from_config(self.config), export)
        for event in events:
            buffer.add(self.complete_event(event))
        await buffer.flush()
        if failures:
            raise failures[0]

    async def run_task(self, name: str) -> Any:
        """`runEveryMinute` or `run_every_minute`, ..."""
        task = python_task_name(name)
        if task not in self.exports.get("run_every", []):
            message = f'Task "{js_task_name(task)}" not found for plugin "{self.name}"'
            raise PluginCallFailed(js_task_name(task), {"name": "Error", "message": message})
        return (await self._call(task, [], self.task_timeout * TASK_TIMEOUT_FACTOR)).value

    async def run_job(self, name: str, payload: Any = None) -> Any:
        if name not in self.exports.get("jobs", []):
            raise PluginCallFailed(f"job {name}", {"name": "Error", "message": f'Job "{name}" not found'})
        return (await self._call(f"job:{name}", [payload], self.task_timeout * TASK_TIMEOUT_FACTOR)).value


def _attachment(key: str, path: str) -> Attachment:
    with open(path, "rb") as f:
        contents = f.read()
    content_type = "application/json" if path.endswith(".json") else "application/octet-stream"
    return Attachment(key, content_type, os.path.basename(path), contents)
