"""The exportEvents upgrade, host-side (plugins §3.8, §7.8).

For each plugin config that exports `exportEvents`, ingested events are buffered on the host
and handed to the plugin in batches, by size (exportEventsBufferBytes) and age
(exportEventsBufferSeconds). A batch that fails with RetryError is retried through the job
`exportEventsWithRetry` after 6 s, 12 s, ... (at most 15 times); any other error is recorded
on the config. Buffers are flushed, and their exports awaited, when a config is removed or
replaced and at shutdown, so a reload loses no buffered event.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.services.plugin_host import ExportHost, PluginCallError

EXPORT_JOB = "exportEventsWithRetry"
MAX_RETRIES = 15
EXPORT_METRICS = {
    "events_seen": "sum",
    "events_delivered_successfully": "sum",
    "undelivered_events": "sum",
    "retry_errors": "sum",
    "other_errors": "sum",
}

EXPORTED = Counter(
    "plugin_server_export_events_total",
    "Events handed to exportEvents, by outcome",
    ["outcome"],
    registry=REGISTRY,
)

log = get_logger(__name__)

# (plugin_config_id, job name, payload, run at epoch ms)
EnqueueJob = Callable[[int, str, dict[str, Any], int], Awaitable[None]]
# (plugin_config_id, metric name, value) — sum metrics only
IncrementMetric = Callable[[int, str, float], None]

_INT_PREFIX = re.compile(r"^\s*([+-]?)(0[xX][0-9a-fA-F]+|\d+)")


def parse_js_int(value: Any) -> int | None:
    """JavaScript parseInt(String(value)): longest leading integer, `0x` means hex, else None."""
    match = _INT_PREFIX.match(str(value) if value is not None else "")
    if not match:
        return None
    sign, digits = match.groups()
    number = int(digits, 16) if digits[:2].lower() == "0x" else int(digits)
    return -number if sign == "-" else number


def _setting(config: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    parsed = parse_js_int(config.get(key))
    return max(low, min(high, default if parsed is None else parsed))


@dataclass(frozen=True, slots=True)
class ExportSettings:
    limit_bytes: int
    timeout_seconds: float
    ignore: frozenset[str]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, test_mode: bool = False) -> ExportSettings:
        ignore_raw = config.get("exportEventsToIgnore")
        ignore = frozenset(p.strip() for p in str(ignore_raw).split(",")) if ignore_raw else frozenset()
        return cls(
            limit_bytes=_setting(config, "exportEventsBufferBytes", 1024 * 1024, 1, 100 * 1024 * 1024),
            timeout_seconds=_setting(config, "exportEventsBufferSeconds", 600 if test_mode else 10, 1, 600),
            ignore=ignore,
        )


def event_weight(event: Mapping[str, Any]) -> int:
    """len(JSON.stringify(event)) in UTF-16 code units, as the original measures."""
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-16-le")) // 2


class ExportBuffer:
    """The buffer of one plugin config."""

    def __init__(
        self,
        plugin_config_id: int,
        settings: ExportSettings,
        export: Callable[[list[Any]], Coroutine[Any, Any, None]],
    ) -> None:
        self.plugin_config_id = plugin_config_id
        self.settings = settings
        self._export = export
        self._items: list[Any] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._exporting = 0  # events of the exports running

    def __len__(self) -> int:
        return len(self._items)

    def add(self, event: Mapping[str, Any]) -> None:
        if event.get("event") in self.settings.ignore:
            return
        weight = event_weight(event)
        if self._items and self._size + weight > self.settings.limit_bytes:
            self._start_flush()
        self._items.append(event)
        self._size += weight
        if self._size > self.settings.limit_bytes:
            self._start_flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.settings.timeout_seconds, self._start_flush)

    @property
    def pending(self) -> int:
        """Events buffered or being exported."""
        return len(self._items) + self._exporting

    def _start_flush(self) -> None:
        batch = self._detach()
        if batch:
            task = asyncio.create_task(self._export(batch), name=f"export:{self.plugin_config_id}")
            self._flushes.add(task)
            self._exporting += len(batch)
            task.add_done_callback(self._flushes.discard)
            task.add_done_callback(lambda _: self._exported(len(batch)))

    def _exported(self, count: int) -> None:
        self._exporting -= count

    def _detach(self) -> list[Any]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._items, self._size = self._items, [], 0
        return batch

    async def flush(self) -> None:
        """Export what is buffered and wait for every export of this buffer still running."""
        self._start_flush()
        while self._flushes:
            await asyncio.gather(*list(self._flushes), return_exceptions=True)


class ExportEventsBuffers:
    """The buffers of every exporting plugin config, and the retry procedure."""

    def __init__(
        self,
        host: ExportHost,
        enqueue_job: EnqueueJob,
        increment_metric: IncrementMetric,
        *,
        test_mode: bool = False,
    ) -> None:
        self._host = host
        self._enqueue_job = enqueue_job
        self._metric = increment_metric
        self._test_mode = test_mode
        self._buffers: dict[int, ExportBuffer] = {}

    def configure(self, plugin_config_id: int, config: Mapping[str, Any]) -> None:
        """Start (or re-tune, keeping what is buffered) the buffer of an exporting config."""
        settings = ExportSettings.from_config(config, test_mode=self._test_mode)
        buffer = self._buffers.get(plugin_config_id)
        if buffer is None:
            self._buffers[plugin_config_id] = ExportBuffer(
                plugin_config_id, settings, lambda batch: self._first_attempt(plugin_config_id, batch)
            )
        else:
            buffer.settings = settings

    def pending_events(self) -> int:
        """Events buffered or being exported, over every buffer (for back-pressure)."""
        return sum(buffer.pending for buffer in self._buffers.values())

    def has(self, plugin_config_id: int) -> bool:
        return plugin_config_id in self._buffers

    def add(self, plugin_config_id: int, event: Mapping[str, Any]) -> None:
        buffer = self._buffers.get(plugin_config_id)
        if buffer is not None:
            buffer.add(event)

    async def flush(self, plugin_config_id: int) -> None:
        buffer = self._buffers.get(plugin_config_id)
        if buffer is not None:
            await buffer.flush()

    async def remove(self, plugin_config_id: int) -> None:
        """Flush and forget a config's buffer: call before tearing the config down."""
        buffer = self._buffers.get(plugin_config_id)
        if buffer is not None:
            await buffer.flush()
            self._buffers.pop(plugin_config_id, None)

    async def flush_all(self) -> None:
        await asyncio.gather(*(b.flush() for b in list(self._buffers.values())))

    async def _first_attempt(self, plugin_config_id: int, batch: list[Any]) -> None:
        payload = {"batch": batch, "batchId": random.randrange(1_000_000), "retriesPerformedSoFar": 0}
        await self.export_with_retry(plugin_config_id, payload)

    async def export_with_retry(self, plugin_config_id: int, payload: Mapping[str, Any]) -> None:
        """The retry procedure: also the body of the `exportEventsWithRetry` job."""
        batch = list(payload.get("batch") or [])
        retries = int(payload.get("retriesPerformedSoFar") or 0)
        count = len(batch)
        if retries == 0:
            self._metric(plugin_config_id, "events_seen", count)
        try:
            await self._host.export_events(plugin_config_id, batch)
        except PluginCallError as error:
            if error.retry:
                await self._retry_later(plugin_config_id, payload, batch, retries)
                return
            self._metric(plugin_config_id, "other_errors", count)
            self._metric(plugin_config_id, "undelivered_events", count)
            EXPORTED.labels("failed").inc(count)
            # recorded directly on the config (plugins §8.18), never an unobserved error
            await self._host.record_error(plugin_config_id, error)
            return
        self._metric(plugin_config_id, "events_delivered_successfully", count)
        EXPORTED.labels("delivered").inc(count)

    async def _retry_later(
        self, plugin_config_id: int, payload: Mapping[str, Any], batch: list[Any], retries: int
    ) -> None:
        count = len(batch)
        self._metric(plugin_config_id, "retry_errors", count)
        if retries >= MAX_RETRIES:
            self._metric(plugin_config_id, "undelivered_events", count)
            EXPORTED.labels("dropped").inc(count)
            log.warning("export batch dropped after retries", plugin_config_id=plugin_config_id, events=count)
            return
        next_payload = {
            "batch": batch,
            "batchId": payload.get("batchId"),
            "retriesPerformedSoFar": retries + 1,
        }
        run_at = int(time.time() * 1000) + 3000 * 2 ** (retries + 1)
        try:
            await self._enqueue_job(plugin_config_id, EXPORT_JOB, next_payload, run_at)
            EXPORTED.labels("retry_enqueued").inc(count)
        except Exception as exc:
            self._metric(plugin_config_id, "undelivered_events", count)
            EXPORTED.labels("dropped").inc(count)
            log.error("could not enqueue export retry", plugin_config_id=plugin_config_id, error=repr(exc))
