"""Metrics plugins declare and update (`meta.metrics[name].increment/max/min`, plugins §4.8,
services §7.6): aggregated in memory per plugin config and, every 30 minutes, captured as one
`$$plugin_metrics` event per config (through the same path as `posthog.capture`), then reset.
A stored 0 is a value like any other (the original treated it as unset; services §10.6).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from plugin_server.logs import get_logger
from plugin_server.services.plugin_host import PluginConfigRef

METRICS_EVENT = "$$plugin_metrics"
FLUSH_CRON = "*/30 * * * *"
OPERATIONS = {"sum": "increment", "max": "max", "min": "min"}

log = get_logger(__name__)

Capture = Callable[[PluginConfigRef, str, Mapping[str, Any]], Awaitable[None]]


class IllegalOperationError(ValueError):
    pass


def validate_declaration(metrics: Mapping[str, Any]) -> dict[str, str]:
    """The declared metrics, types lower-cased; non-string types dropped (plugins §2.7)."""
    declared = {name: kind.lower() for name, kind in metrics.items() if isinstance(kind, str)}
    invalid = [kind for kind in declared.values() if kind not in OPERATIONS]
    if invalid:
        raise IllegalOperationError(
            "Only 'sum', 'max', and 'min' are supported as metric types. Invalid types received: "
            + ", ".join(invalid)
        )
    return declared


class PluginMetrics:
    name = "plugin-metrics"

    def __init__(self, capture: Capture) -> None:
        self._capture = capture
        self._values: dict[int, dict[str, float]] = {}
        self._refs: dict[int, PluginConfigRef] = {}
        self._flusher: asyncio.Task[None] | None = None

    def update(
        self, ref: PluginConfigRef, metric: str, operation: str, value: Any, *, declared: str | None = None
    ) -> None:
        """Apply one operation. `declared` is the metric's declared type, when it has to match."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise IllegalOperationError("Only numbers are allowed for operations on metrics")
        if declared is not None and OPERATIONS.get(declared) != operation:
            raise IllegalOperationError(
                f"metric {metric!r} is a {declared} metric; {operation} is not allowed"
            )
        values = self._values.setdefault(ref.id, {})
        self._refs[ref.id] = ref
        current = values.get(metric)
        if current is None:
            values[metric] = value
        elif operation == "increment":
            values[metric] = current + value
        elif operation == "max":
            values[metric] = max(current, value)
        elif operation == "min":
            values[metric] = min(current, value)
        else:
            raise IllegalOperationError(f"unknown metric operation {operation!r}")

    def increment(self, ref: PluginConfigRef, metric: str, value: float) -> None:
        self.update(ref, metric, "increment", value)

    def current(self, plugin_config_id: int) -> dict[str, float]:
        return dict(self._values.get(plugin_config_id, {}))

    async def flush(self) -> None:
        values, self._values = self._values, {}
        for config_id, metrics in values.items():
            ref = self._refs[config_id]
            properties = {
                **metrics,
                "plugin_name": ref.plugin_name,
                "plugin_id": ref.plugin_id,
                "plugin_tag": ref.plugin_tag,
            }
            try:
                await self._capture(ref, METRICS_EVENT, properties)
            except Exception as exc:
                log.error("could not send plugin metrics", plugin_config_id=config_id, error=repr(exc))

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="plugin-metrics")

    async def _flush_forever(self) -> None:
        while True:
            now = datetime.now(UTC)
            next_at = croniter(FLUSH_CRON, now).get_next(datetime)
            await asyncio.sleep((next_at - now).total_seconds())
            await self.flush()

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
