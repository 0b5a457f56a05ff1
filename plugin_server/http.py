"""HTTP probes and metrics: liveness (/_health, /healthz), readiness (/_ready, /readyz), /metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from plugin_server.logs import get_logger
from plugin_server.metrics import render
from plugin_server.version import VERSION

log = get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[dict[str, str]]]  # failing check name -> reason; {} = ready


class HttpServer:
    name = "http"

    def __init__(self, host: str, port: int, readiness: ReadinessCheck, alive: Callable[[], bool]) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._alive = alive
        self._started = time.monotonic()
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_health", self._health)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/_ready", self._ready)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _health(self, _request: web.Request) -> web.Response:
        body = {"status": "ok", "version": VERSION, "uptime_s": round(time.monotonic() - self._started, 3)}
        if not self._alive():
            body["status"] = "error"
            return web.json_response(body, status=503)
        return web.json_response(body)

    async def _ready(self, _request: web.Request) -> web.Response:
        failing = await self._readiness()
        if failing:
            return web.json_response({"status": "not ready", "failing": failing}, status=503)
        return web.json_response({"status": "ready"})

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("HTTP server listening", host=self._host, port=self.bound_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
