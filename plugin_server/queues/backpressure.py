"""Back-pressure for the queue consumers: whether the work a batch hands on is behind, so that
taking the next batch waits instead of letting queues grow without bound or dropping work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from plugin_server.metrics import REGISTRY

# Events waiting for onEvent/onSnapshot, and events buffered or being exported by exportEvents,
# beyond which consumption waits. Memory is bounded by these plus the batches in flight.
ON_EVENT_LIMIT = 20_000
EXPORT_LIMIT = 20_000

BEHIND = Gauge(
    "plugin_server_ingestion_waiting_for_downstream",
    "1 while a queue consumer takes no batch because the work it hands on is behind",
    ["consumer"],
    registry=REGISTRY,
)

Behind = Callable[[], str | None]  # the reason consumption should wait, or None


def downstream_load(extras: dict[str, Any]) -> Behind:
    """Looks, when asked, at the services published in `AppContext.extras`: the plugin runner's
    onEvent backlog, the export buffers, and the job queue (paused while the plugin workers are
    full). Looked up each time: those services start after the consumer is built."""

    def behind() -> str | None:
        deferred = getattr(extras.get("plugin_runner"), "deferred_events", 0)
        if isinstance(deferred, int) and deferred >= ON_EVENT_LIMIT:
            return f"onEvent/onSnapshot behind: {deferred} events waiting"
        buffers = extras.get("export_buffers")
        exporting = buffers.pending_events() if buffers is not None else 0
        if exporting >= EXPORT_LIMIT:
            return f"exportEvents behind: {exporting} events buffered or exporting"
        if getattr(extras.get("job_queues"), "paused", False):
            return "job queue paused: plugin workers full"
        return None

    return behind
