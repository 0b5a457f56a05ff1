"""Runs the teams' enabled plugins on events: the processEvent chain, onEvent/onSnapshot after
ingestion, scheduled tasks and jobs. Implements EventPluginRunner for the ingestion pipeline.

Entry points for other services: `reload()`, `configs()`, `schedule()`, `run_scheduled_task()`,
`run_job()`, `call_method()`, `services` (register host services), `on_export_events`.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter

from plugin_server.config import Settings
from plugin_server.ingestion.types import PluginEvent
from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.plugins.capabilities import js_task_name, python_task_name
from plugin_server.plugins.errors import ErrorRecorder
from plugin_server.plugins.host_services import HostServices, PluginContext
from plugin_server.plugins.js.sandbox_runtime import JSRuntime
from plugin_server.plugins.js.transpile import Transpiler
from plugin_server.plugins.lifecycle import ConfigInfo, LoadedConfig, same_generation
from plugin_server.plugins.logs import PluginLogSink
from plugin_server.plugins.meta_services import log_target, register_meta_services
from plugin_server.plugins.pool import CallOutcome, SandboxPool
from plugin_server.plugins.registry import fetch_plugin_configs
from plugin_server.plugins.runtime import (
    PluginRuntime,
    PythonSandboxRuntime,
    RuntimeFactory,
    RuntimeSpec,
    UnsupportedRuntime,
)
from plugin_server.queues.kafka_producer import BatchingProducer
from plugin_server.services.plugin_host import PluginConfigRef
from plugin_server.services.plugin_metrics import PluginMetrics

log = get_logger(__name__)

PLUGIN_CALLS = Counter(
    "plugin_server_plugin_calls",
    "Plugin method calls by method and result (ok, error, timeout, memory)",
    ["method", "result"],
    registry=REGISTRY,
)

SCHEDULED_TASKS = ("runEveryMinute", "runEveryHour", "runEveryDay")
TEARDOWN_SECONDS = 5.0
# onEvent/onSnapshot events waiting beyond which the queue consumers pause (none is dropped).
MAX_DEFERRED_EVENTS = 20_000
TASK_TIMEOUT_FACTOR = 10  # scheduled tasks and jobs get one overall limit of 10 x TASK_TIMEOUT


async def _no_capture(ref: PluginConfigRef, event: str, properties: Mapping[str, Any]) -> None:
    """A runner without the host services has nowhere to send its plugins' metrics."""


def _result_label(outcome: CallOutcome) -> str:
    if outcome.ok:
        return "ok"
    name = (outcome.error or {}).get("name")
    return {"TimeoutError": "timeout", "MemoryError": "memory"}.get(str(name), "error")


class PluginRunner:
    def __init__(
        self,
        settings: Settings,
        pg: asyncpg.Pool,
        redis: aioredis.Redis,
        instance_id: str,
        *,
        services: HostServices | None = None,
        runtimes: Mapping[str, RuntimeFactory] | None = None,
        retry_delay_scale: float = 1.0,
        log_flush_seconds: float = 1.0,
        log_producer: BatchingProducer | None = None,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.pg = pg
        self.redis = redis
        self.instance_id = instance_id
        self.services = services or HostServices()
        self.logs = PluginLogSink(pg, instance_id, flush_seconds=log_flush_seconds, producer=log_producer)
        self.errors = ErrorRecorder(pg, self.logs)
        # the host services' metrics (captured as $$plugin_metrics); without them, only aggregated
        self.metrics = metrics or PluginMetrics(_no_capture)
        self.pool = SandboxPool(
            settings.sandbox_count,
            self.services,
            tasks_per_worker=settings.tasks_per_worker,
            memory_limit_mb=settings.sandbox_memory_limit_mb,
            stuck_after=settings.task_timeout + 5.0,
            max_alive=settings.sandbox_max_alive,
            idle_seconds=settings.sandbox_idle_seconds,
        )
        self.retry_delay_scale = retry_delay_scale
        self.js_transpiler = Transpiler()
        self.runtimes: dict[str, RuntimeFactory] = {
            "python": lambda spec: PythonSandboxRuntime(self.pool, spec),
            "js": lambda spec: JSRuntime(spec, self.services, self.js_transpiler),
        }
        self.runtimes.update(runtimes or {})
        self.loaded: dict[int, LoadedConfig] = {}
        # Configs being torn down stay callable by id (the export buffer flushes through them).
        self.retiring: dict[int, LoadedConfig] = {}
        self.team_chains: dict[int, list[LoadedConfig]] = {}
        # Export plugins: the export buffer registers here to receive each ingested event.
        self.on_export_events: Callable[[LoadedConfig, list[PluginEvent]], None] | None = None
        # ... and flushes a config's buffer before the config is torn down.
        self.before_teardown: Callable[[int], Awaitable[None]] | None = None
        # Called before each load attempt of a config (the historical export's setup step).
        self.before_load: Callable[[LoadedConfig], Awaitable[None]] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._deferred_events = 0
        self._reload_lock = asyncio.Lock()
        register_meta_services(self.services, pg, redis, self.logs, self.metrics)
        # an error nobody awaited (a JS unhandled rejection) belongs to the config it came from
        self.services.register("errors.record", self._record_plugin_error)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.pool.start()
        await self.reload()

    async def stop(self) -> None:
        loaded = list(self.loaded.values())
        self.loaded, self.team_chains = {}, {}
        try:
            async with asyncio.timeout(TEARDOWN_SECONDS):
                await asyncio.gather(*(self._teardown(c) for c in loaded), return_exceptions=True)
            if self._background:
                await asyncio.wait(self._background, timeout=TEARDOWN_SECONDS)
        except TimeoutError:
            log.warning("plugin teardown did not finish in time", seconds=TEARDOWN_SECONDS)
        finally:
            # the sandboxes must end before the process does, whatever happened above
            await self.pool.stop()
        self.js_transpiler.close()
        await self.logs.flush()

    async def _record_plugin_error(self, context: PluginContext, error: dict[str, Any]) -> None:
        await self.errors.record(log_target(context), error)

    def make_runtime(self, kind: str, spec: RuntimeSpec) -> PluginRuntime:
        factory = self.runtimes.get(kind)
        if factory is None:
            return UnsupportedRuntime(kind, spec)
        return factory(spec)

    async def reload(self) -> None:
        """Load what is in force now: unchanged configs are kept, changed ones replaced (the old
        one torn down in the background), removed ones torn down (recommendation 8.6)."""
        async with self._reload_lock:
            snapshot = await fetch_plugin_configs(self.pg)
            previous = self.loaded
            loaded: dict[int, LoadedConfig] = {}
            replaced: list[LoadedConfig] = []
            for config in snapshot.configs.values():
                old = previous.get(config.id)
                if old is not None and same_generation(old.config, config):
                    loaded[config.id] = old
                    continue
                # unguessable: a sandbox cannot name a config it was not given (the host's
                # per-sandbox check is what refuses it; this only makes guessing pointless)
                fresh = LoadedConfig(config, f"{config.id}:{secrets.token_hex(16)}", self)
                fresh.start()
                loaded[config.id] = fresh
                if old is not None:
                    replaced.append(old)
            replaced += [old for config_id, old in previous.items() if config_id not in loaded]
            chains: dict[int, list[LoadedConfig]] = {}
            for item in loaded.values():
                if item.config.team_id is None:
                    log.error("plugin config without a team is not run", plugin_config_id=item.id)
                    continue
                chains.setdefault(item.config.team_id, []).append(item)
            for chain in chains.values():
                chain.sort(key=lambda c: c.config.order)  # stable: ties keep query order
            self.loaded, self.team_chains = loaded, chains
            for old in replaced:
                self._spawn(self._teardown(old))

    async def _teardown(self, config: LoadedConfig) -> None:
        self.retiring.setdefault(config.id, config)
        try:
            await config.teardown()
        finally:
            if self.retiring.get(config.id) is config:
                del self.retiring[config.id]

    def configs(self) -> list[ConfigInfo]:
        return [c.info() for c in self.loaded.values()]

    async def wait_loaded(self) -> None:
        """Until every config's current load attempt has finished (tests, schedule building)."""
        await asyncio.gather(*(c.wait() for c in self.loaded.values()))

    async def schedule(self) -> dict[str, list[int]]:
        """Config ids per scheduled task, once every config finished loading (§3.6)."""
        await self.wait_loaded()
        result: dict[str, list[int]] = {name: [] for name in SCHEDULED_TASKS}
        for config in self.loaded.values():
            for name in (config.exports or {}).get("run_every", []):
                if js_task_name(name) in result:
                    result[js_task_name(name)].append(config.id)
        return result

    async def settle(self) -> None:
        """Until the work calls left behind (error records, deferred onEvent/exportEvents,
        teardowns) has finished and the plugin logs are written."""
        while self._background:
            await asyncio.wait(list(self._background))
        await self.logs.flush()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ processEvent chain
    async def process_events(self, events: Sequence[PluginEvent]) -> list[PluginEvent | None]:
        current: list[PluginEvent | None] = list(events)
        chains: list[list[LoadedConfig]] = []
        for event in events:
            team_id = event.get("team_id")
            snapshot = event.get("event") == "$snapshot"
            chains.append(
                [] if snapshot or not isinstance(team_id, int) else self.team_chains.get(team_id, [])
            )
        if not any(chains):
            return current
        succeeded: dict[int, list[str]] = {}
        failed: dict[int, list[str]] = {}
        for position in range(max(len(c) for c in chains)):
            groups: dict[LoadedConfig, list[int]] = {}
            for index, chain in enumerate(chains):
                if current[index] is not None and position < len(chain):
                    groups.setdefault(chain[position], []).append(index)
            await asyncio.gather(
                *(
                    self._run_process_event(c, idx, events, current, succeeded, failed)
                    for c, idx in groups.items()
                )
            )
        deferred_of: dict[int, list[str]] = {}  # per chain (by identity), worked out once a batch
        for index, chain in enumerate(chains):
            processed = current[index]
            if processed is None or not chain:
                continue
            deferred = deferred_of.get(id(chain))
            if deferred is None:
                deferred = deferred_of[id(chain)] = [
                    c.label
                    for c in chain
                    if c.has("on_event") or c.has("on_snapshot") or c.has("export_events")
                ]
            ok, bad = succeeded.get(index), failed.get(index)
            if ok or bad or deferred:
                properties = processed.get("properties")
                if properties and not isinstance(properties, dict):
                    continue  # not an object: nothing to mark; the pipeline dead-letters the event
                if processed is events[index] or not isinstance(properties, dict):
                    # still the caller's event (no plugin returned a new one): mark a copy
                    properties = dict(properties or {})
                    processed = current[index] = dict(processed)
                    processed["properties"] = properties
                properties["$plugins_succeeded"] = ok or []
                properties["$plugins_failed"] = bad or []
                properties["$plugins_deferred"] = list(deferred)
        return current

    async def _run_process_event(
        self,
        config: LoadedConfig,
        indexes: list[int],
        originals: Sequence[PluginEvent],
        current: list[PluginEvent | None],
        succeeded: dict[int, list[str]],
        failed: dict[int, list[str]],
    ) -> None:
        exports = await config.wait()
        if exports is None or "process_event" not in exports.get("methods", []) or config.runtime is None:
            return
        outcomes = await config.runtime.call(
            "process_event", [[current[i]] for i in indexes], self.settings.task_timeout
        )
        errors: list[tuple[dict[str, Any], Any]] = []
        # Counted per call, not per event: `labels` costs more than the rest of the loop.
        results: collections.Counter[str] = collections.Counter()
        label = config.label
        for index, outcome in zip(indexes, outcomes, strict=True):
            results[_result_label(outcome)] += 1
            team_id = originals[index].get("team_id")
            if outcome.ok:
                value = outcome.value
                if value is None:
                    current[index] = None
                    continue
                if value.get("team_id") != team_id:
                    value["team_id"] = team_id
                    failed.setdefault(index, []).append(label)
                    error = {
                        "name": "IllegalOperationError",
                        "message": "Plugin tried to change event.team_id",
                        "stack": "",
                    }
                    errors.append((error, value))
                else:
                    succeeded.setdefault(index, []).append(label)
                current[index] = value
            else:
                failed.setdefault(index, []).append(label)
                if isinstance(outcome.mutated_input, dict):
                    # in-place changes made before the failure are kept, as in the original (3.2)
                    outcome.mutated_input["team_id"] = team_id
                    current[index] = outcome.mutated_input
                errors.append((outcome.error or {}, current[index]))
        for result, count in results.items():
            PLUGIN_CALLS.labels("process_event", result).inc(count)
        if errors:
            self._spawn(self._record_errors(config, errors))

    async def _record_errors(self, config: LoadedConfig, errors: list[tuple[dict[str, Any], Any]]) -> None:
        """Each failure gets a log entry; the config's error column gets the latest one."""
        for error, _event in errors[:-1]:
            self.logs.write(config.target, "PLUGIN", "ERROR", str(error.get("message", "")))
        error, event = errors[-1]
        await self.errors.record(config.target, error, event)

    # ------------------------------------------------------------------ onEvent / onSnapshot
    def on_events_ingested(self, events: Sequence[PluginEvent]) -> None:
        groups: dict[tuple[LoadedConfig, str], list[PluginEvent]] = {}
        for event in events:
            method = "on_snapshot" if event.get("event") == "$snapshot" else "on_event"
            team_id = event.get("team_id")
            for config in self.team_chains.get(team_id, []) if isinstance(team_id, int) else []:
                groups.setdefault((config, method), []).append(event)
        if not groups:
            return
        # Never dropped: the queue consumers pause while `deferred_events` is at MAX_DEFERRED_EVENTS.
        self._deferred_events += sum(len(v) for v in groups.values())
        for (config, method), batch in groups.items():
            self._spawn(self._run_deferred(config, method, batch))

    @property
    def deferred_events(self) -> int:
        """Events handed to onEvent/onSnapshot whose calls have not finished."""
        return self._deferred_events

    async def _run_deferred(self, config: LoadedConfig, method: str, events: list[PluginEvent]) -> None:
        try:
            exports = await config.wait()
            if exports is None or config.runtime is None:
                return
            if (
                method == "on_event"
                and "export_events" in exports.get("methods", [])
                and self.on_export_events
            ):
                self.on_export_events(config, events)
            if method not in exports.get("methods", []):
                return
            outcomes = await config.runtime.call(method, [[e] for e in events], self.settings.task_timeout)
            errors = []
            for event, outcome in zip(events, outcomes, strict=True):
                PLUGIN_CALLS.labels(method, _result_label(outcome)).inc()
                if not outcome.ok:
                    errors.append((outcome.error or {}, event))
            if errors:
                await self._record_errors(config, errors)
        finally:
            self._deferred_events -= len(events)

    # ------------------------------------------------------------------ tasks, jobs, methods
    async def call_method(
        self, plugin_config_id: int, method: str, args: list[Any], *, time_limit: float | None = None
    ) -> CallOutcome:
        """Run one Python-named method (`export_events`, `job:<name>`, ...) of a loaded config;
        the failure is returned, not recorded. A config being torn down is still reached."""
        config = self.loaded.get(plugin_config_id) or self.retiring.get(plugin_config_id)
        if config is None:
            return CallOutcome.failure("LookupError", f"Plugin config {plugin_config_id} is not loaded")
        exports = await config.wait()
        if exports is None or config.runtime is None:
            return CallOutcome.failure("Error", f"Plugin config {plugin_config_id} failed to load")
        [outcome] = await config.runtime.call(method, [args], time_limit or self.settings.task_timeout)
        PLUGIN_CALLS.labels(method.split(":")[0], _result_label(outcome)).inc()
        return outcome

    async def run_scheduled_task(self, plugin_config_id: int, task: str) -> Any:
        """Run `runEveryMinute` (or `run_every_minute`, ...); returns its value, None on failure
        (the error is recorded on the config)."""
        config = self.loaded.get(plugin_config_id)
        if config is None:
            return None
        name = python_task_name(task)
        exports = await config.wait()
        if exports is None:
            return None
        if name not in exports.get("run_every", []):
            message = (
                f'Task "{js_task_name(name)}" not found for plugin "{config.config.plugin.name}" '
                f"with config id {plugin_config_id}"
            )
            await self.errors.record(config.target, message)
            return None
        time_limit = self.settings.task_timeout * TASK_TIMEOUT_FACTOR
        outcome = await self.call_method(plugin_config_id, name, [], time_limit=time_limit)
        if not outcome.ok:
            await self.errors.record(config.target, outcome.error or {})
            return None
        return outcome.value

    async def run_job(self, plugin_config_id: int, job_name: str, payload: Any) -> CallOutcome:
        """Run a plugin job with `(payload, meta)` (payload None when absent); errors are recorded."""
        time_limit = self.settings.task_timeout * TASK_TIMEOUT_FACTOR
        outcome = await self.call_method(
            plugin_config_id, f"job:{job_name}", [payload], time_limit=time_limit
        )
        config = self.loaded.get(plugin_config_id)
        if not outcome.ok and config is not None:
            await self.errors.record(config.target, outcome.error or {})
        return outcome
