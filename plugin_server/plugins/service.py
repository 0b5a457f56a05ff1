"""The plugin runner as a server service: builds the PluginRunner, bridges the host services
(GeoIP, fetch, jobs, capture, API) onto its request channel, and publishes

- `ctx.extras["plugin_runner"]`: the EventPluginRunner the ingestion pipeline calls;
- `ctx.extras["plugins"]`: the PluginHost the scheduler, job consumer, reload listener and
  export buffers drive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from plugin_server.context import AppContext
from plugin_server.logs import get_logger
from plugin_server.plugins.host_services import HostServices, PluginContext
from plugin_server.plugins.lifecycle import LoadedConfig
from plugin_server.plugins.meta_services import config_ref
from plugin_server.plugins.runner import SCHEDULED_TASKS, PluginRunner
from plugin_server.queues.kafka_service import KAFKA_PRODUCER
from plugin_server.services.export_events import EXPORT_JOB, ExportEventsBuffers
from plugin_server.services.historical_export import HISTORICAL_JOBS, HistoricalExport
from plugin_server.services.plugin_bigquery import PluginBigQuery
from plugin_server.services.plugin_host import JobRetry, PluginCallError, PluginConfigRef
from plugin_server.services.plugin_postgres import PluginPostgres
from plugin_server.services.plugin_s3 import PluginS3

log = get_logger(__name__)

PLUGIN_RUNNER = "plugin_runner"
PLUGINS = "plugins"


class PluginRunnerHost:
    """The PluginHost protocol of the host services, answered by a PluginRunner."""

    def __init__(self, runner: PluginRunner) -> None:
        self.runner = runner
        # set once the export buffers exist: they run the exportEventsWithRetry job themselves
        self.export_buffers: ExportEventsBuffers | None = None
        # set once the historical export exists: it runs its two jobs for exporting configs
        self.historical_export: HistoricalExport | None = None

    def _config(self, plugin_config_id: int) -> LoadedConfig | None:
        return self.runner.loaded.get(plugin_config_id) or self.runner.retiring.get(plugin_config_id)

    def scheduled_configs(self) -> Mapping[str, Sequence[int]]:
        schedule: dict[str, list[int]] = {name: [] for name in SCHEDULED_TASKS}
        for loaded in self.runner.loaded.values():
            for name in (loaded.exports or {}).get("run_every", []):
                js = "runEvery" + name.removeprefix("run_every_").title().replace("_", "")
                if js in schedule:
                    schedule[js].append(loaded.id)
        return schedule

    async def run_scheduled_task(self, plugin_config_id: int, task: str) -> Any:
        return await self.runner.run_scheduled_task(plugin_config_id, task)

    async def run_job(self, plugin_config_id: int, job_type: str, payload: Any) -> None:
        if job_type == EXPORT_JOB and self.export_buffers is not None:
            await self.export_buffers.export_with_retry(plugin_config_id, payload)
            return
        if job_type in HISTORICAL_JOBS and self.historical_export is not None:
            if await self._exports_events(plugin_config_id):
                await self.historical_export.run_job(plugin_config_id, job_type, payload)
                return
        outcome = await self.runner.run_job(plugin_config_id, job_type, payload)
        if not outcome.ok and (outcome.error or {}).get("retry"):
            raise JobRetry((outcome.error or {}).get("message", ""))

    async def _exports_events(self, plugin_config_id: int) -> bool:
        """Whether the config has exportEvents; a config not loaded (yet) has its job retried."""
        loaded = self._config(plugin_config_id)
        exports = await loaded.wait() if loaded is not None else None
        if loaded is None or exports is None:
            raise JobRetry(f"plugin config {plugin_config_id} is not loaded")
        return "export_events" in exports.get("methods", [])

    def write_log(self, plugin_config_id: int, message: str) -> None:
        loaded = self._config(plugin_config_id)
        if loaded is not None:
            self.runner.logs.write(loaded.target, "SYSTEM", "LOG", message)

    def workers_full(self) -> bool:
        return self.runner.pool.full()

    async def wait_drained(self) -> None:
        await self.runner.pool.drained.wait()

    async def reload_plugins(self) -> None:
        await self.runner.reload()

    def config_ref(self, plugin_config_id: int) -> PluginConfigRef | None:
        loaded = self._config(plugin_config_id)
        if loaded is None:
            return None
        return config_ref(loaded.context, loaded.config.plugin.tag)

    async def export_events(self, plugin_config_id: int, events: Sequence[dict[str, Any]]) -> None:
        outcome = await self.runner.call_method(plugin_config_id, "export_events", [list(events)])
        if not outcome.ok:
            error = outcome.error or {}
            raise PluginCallError(
                str(error.get("name", "Error")),
                str(error.get("message", "")),
                retry=bool(error.get("retry")),
                stack=str(error.get("stack", "")),
            )

    async def record_error(self, plugin_config_id: int, error: PluginCallError) -> None:
        loaded = self._config(plugin_config_id)
        if loaded is not None:
            payload = {"name": error.name, "message": error.message, "stack": error.stack}
            await self.runner.errors.record(loaded.target, payload)


def bridge_host_services(runner: PluginRunner, host: Any) -> None:
    """Register the host services' operations on the runner's request channel."""
    register_host_bridge(runner.services, host)


def register_host_bridge(services: HostServices, host: Any) -> None:
    """Answer geoip, jobs, capture, API and fetch requests with `host.call(ref, op, args)` (the
    host services' interface, plugin_server/services/host_api.py)."""

    async def geoip_locate(ctx: PluginContext, ip: str) -> Any:
        return await host.call(config_ref(ctx), "geoip.locate", (ip,))

    async def jobs_enqueue(ctx: PluginContext, job_type: str, payload: Any, run_at_ms: float) -> None:
        await host.call(config_ref(ctx), "jobs.enqueue", (job_type, payload, run_at_ms))

    async def capture(ctx: PluginContext, event: str, properties: dict[str, Any]) -> None:
        await host.call(config_ref(ctx), "posthog.capture", (event, properties))

    async def api(ctx: PluginContext, method: str, path: str, options: dict[str, Any]) -> Any:
        return await host.call(config_ref(ctx), "posthog.api", (method, path, options))

    async def fetch(ctx: PluginContext, url: str, options: dict[str, Any]) -> Any:
        body = options.get("body")
        if options.get("json") is not None:
            body = json.dumps(options["json"])
        args = (url, options.get("method"), options.get("headers"), body, options.get("timeout"))
        return await host.call(config_ref(ctx), "fetch", args)

    handlers: dict[str, Any] = {
        "geoip.locate": geoip_locate,
        "jobs.enqueue": jobs_enqueue,
        "posthog.capture": capture,
        "posthog.api": api,
        "fetch": fetch,
    }
    for name, handler in handlers.items():
        services.register(name, handler)


class PluginRunnerService:
    name = "plugins"

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        # Kafka mode: plugin log entries go to the plugin_log_entries topic (ClickHouse reads it)
        log_producer = ctx.extras.get(KAFKA_PRODUCER) if ctx.settings.kafka_enabled else None
        host = ctx.extras.get("host_services")
        self.runner = PluginRunner(
            ctx.settings,
            ctx.postgres,
            ctx.redis,
            ctx.instance_id,
            log_producer=log_producer,
            metrics=host.metrics if host is not None else None,
        )
        ctx.extras[PLUGIN_RUNNER] = self.runner
        ctx.extras[PLUGINS] = PluginRunnerHost(self.runner)
        # Export destinations plugins reach through the host (their sandboxes have no sockets).
        allow_private = ctx.settings.plugin_fetch_allow_private
        self.destinations = (
            PluginPostgres(allow_private=allow_private),
            PluginS3(allow_private=allow_private),
            PluginBigQuery(allow_private=allow_private),
        )
        for destination in self.destinations:
            for name, handler in destination.handlers().items():
                self.runner.services.register(name, handler)

    async def start(self) -> None:
        host = self.ctx.extras.get("host_services")
        if host is not None:
            bridge_host_services(self.runner, host)
        buffers = self.ctx.extras.get("export_buffers")
        if buffers is not None:

            def buffer_events(loaded: Any, events: list[dict[str, Any]]) -> None:
                if not buffers.has(loaded.id):
                    buffers.configure(loaded.id, loaded.config.config)
                for event in events:
                    buffers.add(loaded.id, event)

            self.runner.on_export_events = buffer_events
            self.ctx.extras[PLUGINS].export_buffers = buffers
            self.runner.before_teardown = buffers.remove
        historical = self.ctx.extras.get("historical_export")
        if historical is not None:

            async def take_bounds(loaded: LoadedConfig) -> None:
                # exporting plugins only (and those never loaded, whose methods are not known yet)
                methods = (loaded.config.plugin.capabilities or {}).get("methods")
                if loaded.config.team_id is not None and (methods is None or "exportEvents" in methods):
                    await historical.take_bounds(loaded.id, loaded.config.team_id)

            self.ctx.extras[PLUGINS].historical_export = historical
            self.runner.before_load = take_bounds
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        for destination in self.destinations:
            await destination.stop()
