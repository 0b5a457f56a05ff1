"""Staleness watchdog (STALENESS_RESTART_SECONDS): when nothing was ingested for that long,
fail liveness and stop the server with a non-zero status so the orchestrator restarts it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import Counter

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY

log = get_logger(__name__)
STALE_RESTARTS = Counter(
    "plugin_server_stale_restarts", "Times the server stopped itself for ingesting nothing", registry=REGISTRY
)


class Activity:
    """When this process last handed an event on, and what kind of hand-over it was."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.last_wall = datetime.now(UTC)
        self.kind = "serverStart"

    def touch(self, kind: str) -> None:
        self.last = time.monotonic()
        self.last_wall = datetime.now(UTC)
        self.kind = kind


class StalenessWatchdog:
    name = "staleness-watchdog"

    def __init__(self, activity: Activity, threshold_seconds: float, on_stale: Callable[[], None]) -> None:
        self._activity = activity
        self._threshold = threshold_seconds
        self._on_stale = on_stale
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        self._activity.touch("serverStart")

    async def run(self) -> None:
        # The original checked every min(N, 10000) *ms*; seconds were meant.
        interval = min(self._threshold, 10.0)
        while not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            idle = time.monotonic() - self._activity.last
            if idle > self._threshold:
                STALE_RESTARTS.inc()
                log.error(
                    f"Plugin Server has not ingested events for over {self._threshold:g} seconds! Rebooting.",
                    last_activity=self._activity.last_wall.isoformat(),
                    last_activity_type=self._activity.kind,
                )
                self._on_stale()
                return

    async def stop(self) -> None:
        self._stopped.set()
