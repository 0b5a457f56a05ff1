"""Runs each service's main loop as a task; a crashed loop is logged and restarted with
back-off, and one that keeps crashing brings the process down (never silently gone)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from plugin_server.logs import get_logger
from plugin_server.metrics import SERVICE_RESTARTS, SERVICE_UP

log = get_logger(__name__)


@runtime_checkable
class Service(Protocol):
    """A long-lived part of the server. `start` returns once it is running; `stop` drains it."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class LoopingService(Service, Protocol):
    """A service with a main loop the supervisor runs (and restarts if it crashes)."""

    async def run(self) -> None: ...


@runtime_checkable
class ReadinessReporter(Protocol):
    def ready(self) -> tuple[bool, str]: ...


class Supervisor:
    def __init__(
        self,
        on_fatal: Callable[[str], Awaitable[None] | None],
        *,
        max_restarts: int = 5,
        window_seconds: float = 60.0,
        base_backoff: float = 0.5,
    ) -> None:
        self._on_fatal = on_fatal
        self._max_restarts = max_restarts
        self._window = window_seconds
        self._base_backoff = base_backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def watch(self, service: LoopingService) -> None:
        self._tasks[service.name] = asyncio.create_task(
            self._keep_running(service), name=f"svc:{service.name}"
        )

    def is_running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def _keep_running(self, service: LoopingService) -> None:
        crashes: list[float] = []
        while not self._stopping:
            SERVICE_UP.labels(service.name).set(1)
            try:
                await service.run()
                return  # a clean return means the service is done (it was stopped)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = time.monotonic()
                crashes = [t for t in crashes if now - t < self._window] + [now]
                log.error("service crashed", service=service.name, error=repr(exc), exc_info=exc)
                if len(crashes) > self._max_restarts:
                    log.error("service keeps crashing; stopping the server", service=service.name)
                    result = self._on_fatal(service.name)
                    if result is not None:
                        await result
                    return
                SERVICE_RESTARTS.labels(service.name).inc()
                await asyncio.sleep(self._base_backoff * 2 ** (len(crashes) - 1))
            finally:
                SERVICE_UP.labels(service.name).set(0)

    async def stop(self) -> None:
        """Called after the services' own stop(): wait for their loops to return, then cancel."""
        self._stopping = True
        tasks = list(self._tasks.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
