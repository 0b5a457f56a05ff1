"""The server's lifecycle: startup → run until a signal → graceful shutdown.

One event loop. Start-up opens the HTTP probes first (so probes answer during a long
start), connects Postgres and Redis, then starts each service in order; shutdown stops
taking work, lets services finish and flush in reverse order, and closes the pools, all
within SHUTDOWN_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from plugin_server.config import Settings
from plugin_server.context import AppContext
from plugin_server.db.postgres import create_pool
from plugin_server.db.redis import create_redis
from plugin_server.gc_tuning import tune_garbage_collector
from plugin_server.http import HttpServer
from plugin_server.ingestion.actions import action_cache_services
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.logs import get_logger
from plugin_server.metrics import SERVER_INFO
from plugin_server.plugins.service import PluginRunnerService
from plugin_server.queues.celery_service import celery_services
from plugin_server.queues.kafka_service import kafka_producer_services, kafka_services
from plugin_server.services.assembly import build_host_services, build_plugin_drivers
from plugin_server.services.staleness import StalenessWatchdog
from plugin_server.services.status import StatusKeys
from plugin_server.supervisor import LoopingService, ReadinessReporter, Service, Supervisor
from plugin_server.systemd import notify
from plugin_server.version import VERSION

log = get_logger(__name__)

READINESS_CACHE_SECONDS = 2.0
# Exit statuses: a second signal exits at once with the shell's 128 + signal number.
EXIT_OK, EXIT_FAILURE = 0, 1


def build_services(ctx: AppContext, server: Server) -> list[Service]:
    """Every service of a running server, in start order (stopped in reverse)."""
    settings = ctx.settings
    services: list[Service] = [StatusKeys(ctx.redis, settings.job_queue_kinds)]
    # Kafka mode: the shared producer, before everything that produces (stopped after them)
    services += kafka_producer_services(ctx)
    # what plugins call (GeoIP, fetch, jobs, capture, metrics): up before any plugin loads
    services += build_host_services(ctx)
    # the plugin runner: loads plugins, publishes extras["plugin_runner"] and extras["plugins"]
    services.append(PluginRunnerService(ctx))
    # the action cache: matched by ingestion, kept current by the reload listener built below
    services += action_cache_services(ctx)
    # the plugin registry, once built here, publishes itself as extras["plugins"] before this point
    plugins = ctx.extras.get("plugins")
    if plugins is not None:
        services += build_plugin_drivers(ctx, plugins)
    # the Celery list: the Postgres pipeline and its consumer, started after the plugins
    services += celery_services(ctx)
    # Kafka mode: the topic consumer and the pipeline writing for ClickHouse
    services += kafka_services(ctx)
    if settings.staleness_restart_seconds > 0:
        services.append(
            StalenessWatchdog(ctx.activity, settings.staleness_restart_seconds, server.stop_for_staleness)
        )
    return services


class Server:
    def __init__(self, settings: Settings, *, handle_signals: bool = True) -> None:
        self.settings = settings
        self.instance_id = uuidt()
        self._handle_signals = handle_signals
        self._stop_requested = asyncio.Event()
        self._exit_code = EXIT_OK
        self._signals_seen = 0
        self._ready = False
        self._shutting_down = False
        self._fatal = False
        self._services: list[Service] = []
        self._supervisor = Supervisor(self._on_fatal)
        self._readiness_cache: tuple[float, dict[str, str]] | None = None
        self.ctx: AppContext | None = None
        self.http: HttpServer | None = None

    # ------------------------------------------------------------------ public
    async def serve(self) -> int:
        """Run until stopped; returns the process exit status."""
        if self._handle_signals:
            self._install_signal_handlers()
        try:
            await self.startup()
        except Exception as exc:
            log.error("💥 Launchpad failure!", error=repr(exc), exc_info=exc)
            await self.shutdown()
            return EXIT_FAILURE
        await self._stop_requested.wait()
        return await self.shutdown()

    def request_stop(self, exit_code: int = EXIT_OK) -> None:
        self._exit_code = max(self._exit_code, exit_code)
        self._stop_requested.set()

    def stop_for_staleness(self) -> None:
        self._fatal = True  # liveness fails at once; the orchestrator restarts us after the drain
        self.request_stop(EXIT_FAILURE)

    @property
    def ready(self) -> bool:
        return self._ready and not self._shutting_down

    # ------------------------------------------------------------------ startup
    async def startup(self) -> None:
        settings = self.settings
        SERVER_INFO.info({"version": VERSION, "instance_id": self.instance_id})
        log.info(
            f"ℹ️ {settings.sandbox_count} workers, {settings.tasks_per_worker} tasks per worker",
            instance_id=self.instance_id,
        )
        await self._start_http()
        postgres = await create_pool(settings.postgres_dsn, heroku_tls=bool(os.environ.get("DYNO")))
        redis = create_redis(settings)
        self.ctx = AppContext(settings=settings, instance_id=self.instance_id, postgres=postgres, redis=redis)
        await redis.ping()
        for service in build_services(self.ctx, self):
            await service.start()
            self._services.append(service)
            if isinstance(service, LoopingService):
                self._supervisor.watch(service)
        if self._handle_signals:  # the server owns the process (not embedded in tests or tools)
            tune_garbage_collector()
        self._ready = True
        notify("READY=1")
        log.info("🚀 All systems go")

    async def _start_http(self) -> None:
        if self.settings.http_server_port == 0 and self.http is None:
            return
        self.http = HttpServer(
            self.settings.http_server_host, self.settings.http_server_port, self.readiness, self.alive
        )
        await self.http.start()

    # ------------------------------------------------------------------ probes
    def alive(self) -> bool:
        return not self._fatal

    async def readiness(self) -> dict[str, str]:
        """Failing checks by name ({} when ready), cached briefly so probes stay cheap."""
        now = time.monotonic()
        if self._readiness_cache and now - self._readiness_cache[0] < READINESS_CACHE_SECONDS:
            return self._readiness_cache[1]
        failing = await self._check_readiness()
        self._readiness_cache = (now, failing)
        return failing

    async def _check_readiness(self) -> dict[str, str]:
        if self._shutting_down:
            return {"server": "shutting down"}
        if not self._ready or self.ctx is None:
            return {"server": "starting"}
        failing: dict[str, str] = {}
        try:
            async with asyncio.timeout(2):
                await self.ctx.postgres.fetchval("SELECT 1")
        except Exception as exc:
            failing["postgres"] = repr(exc)
        try:
            async with asyncio.timeout(2):
                await self.ctx.redis.ping()
        except Exception as exc:
            failing["redis"] = repr(exc)
        for service in self._services:
            if isinstance(service, LoopingService) and not self._supervisor.is_running(service.name):
                failing[service.name] = "not running"
            elif isinstance(service, ReadinessReporter):
                ok, reason = service.ready()
                if not ok:
                    failing[service.name] = reason
        return failing

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self) -> int:
        if self._shutting_down:
            return self._exit_code
        self._shutting_down = True
        notify("STOPPING=1")
        log.info("💤 Shutting down gracefully...")
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_seconds):
                await self._stop_everything()
        except TimeoutError:
            log.error("shutdown did not finish in time", budget_s=self.settings.shutdown_timeout_seconds)
            self._exit_code = EXIT_FAILURE
        log.info("👋 Over and out!")
        return self._exit_code

    async def _stop_everything(self) -> None:
        for service in reversed(self._services):
            try:
                await service.stop()
            except Exception as exc:
                log.error(
                    "service failed to stop cleanly", service=service.name, error=repr(exc), exc_info=exc
                )
                self._exit_code = EXIT_FAILURE
        await self._supervisor.stop()
        if self.ctx is not None:
            await self.ctx.redis.aclose()
            await self.ctx.postgres.close()
        if self.http is not None:
            await self.http.stop()

    async def _on_fatal(self, service: str) -> None:
        self._fatal = True
        log.error("a service failed for good; exiting", service=service)
        self.request_stop(EXIT_FAILURE)

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals_seen += 1
        if self._signals_seen > 1:
            log.warning("🔁 second signal: exiting at once", signal=sig.name)
            os._exit(128 + sig.value)
        log.info("signal received: stopping", signal=sig.name)
        self.request_stop()


async def run_idle(settings: Settings) -> int:
    """PLUGIN_SERVER_IDLE: serve probes, touch nothing, process nothing."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)

    async def no_failures() -> dict[str, str]:
        return {}

    http: HttpServer | None = None
    if settings.http_server_port:
        http = HttpServer(settings.http_server_host, settings.http_server_port, no_failures, lambda: True)
        await http.start()
    log.info("💤 Disengaging this plugin server instance due to the PLUGIN_SERVER_IDLE env var...")
    notify("READY=1")
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=30)
        except TimeoutError:
            log.info("💤 Plugin server still disengaged with PLUGIN_SERVER_IDLE")
    if http is not None:
        await http.stop()
    return EXIT_OK
