"""Plugin log entries (posthog_pluginlogentry), buffered and written in multi-row inserts (§2.12)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from plugin_server.ingestion.kafka_messages import clickhouse_time, plugin_log_entry_record
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.logs import get_logger
from plugin_server.plugins import queries
from plugin_server.queues.kafka_producer import BatchingProducer

log = get_logger(__name__)

SOURCES = ("SYSTEM", "PLUGIN", "CONSOLE")
TYPES = ("DEBUG", "LOG", "INFO", "WARN", "ERROR")
MAX_BUFFERED = 50_000


@dataclass(slots=True, frozen=True)
class LogTarget:
    team_id: int
    plugin_id: int
    plugin_config_id: int


@dataclass(slots=True, frozen=True)
class LogEntry:
    id: str
    target: LogTarget
    timestamp: datetime
    source: str
    type: str
    message: str


class PluginLogSink:
    """Buffers entries and inserts them at most `flush_seconds` after the first one arrived."""

    def __init__(
        self,
        pg: asyncpg.Pool,
        instance_id: str,
        *,
        flush_seconds: float = 1.0,
        producer: BatchingProducer | None = None,
    ) -> None:
        self.pg = pg
        # Kafka mode: entries go to the `plugin_log_entries` topic instead of the table.
        self.producer = producer
        self.instance_id = instance_id
        self.flush_seconds = flush_seconds
        self._buffer: list[LogEntry] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def write(
        self, target: LogTarget, source: str, type_: str, message: str, timestamp: datetime | None = None
    ) -> None:
        if target.team_id is None:
            return
        if len(self._buffer) >= MAX_BUFFERED:
            self.dropped += 1
            return
        entry = LogEntry(uuidt(), target, timestamp or datetime.now(UTC), source, type_, message)
        self._buffer.append(entry)
        if self.flush_seconds <= 0:
            self._start_flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self._start_flush)

    def _start_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._write_buffer())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _produce(self, entries: list[LogEntry], producer: BatchingProducer) -> None:
        for entry in entries:
            record = plugin_log_entry_record(
                {
                    "id": entry.id,
                    "team_id": entry.target.team_id,
                    "plugin_id": entry.target.plugin_id,
                    "plugin_config_id": entry.target.plugin_config_id,
                    "timestamp": clickhouse_time(entry.timestamp),  # ISO with " " for "T", no "Z"
                    "source": entry.source,
                    "type": entry.type,
                    "message": entry.message,
                    "instance_id": self.instance_id,
                }
            )
            try:
                await producer.queue(record)
            except Exception as exc:  # log writing never stops plugin work
                log.error("could not produce a plugin log entry", error=repr(exc))

    async def flush(self) -> None:
        """Write what is buffered and wait for writes already under way."""
        pending = list(self._flushing)
        await self._write_buffer()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _write_buffer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries, self._buffer = self._buffer, []
        if entries and self.producer is not None:
            await self._produce(entries, self.producer)
        elif entries:
            instance = uuid.UUID(self.instance_id)
            try:
                await self.pg.execute(
                    queries.INSERT_LOG_ENTRIES,
                    [uuid.UUID(e.id) for e in entries],
                    [e.target.team_id for e in entries],
                    [e.target.plugin_id for e in entries],
                    [e.target.plugin_config_id for e in entries],
                    [e.timestamp for e in entries],
                    [e.source for e in entries],
                    [e.type for e in entries],
                    [e.message for e in entries],
                    [instance] * len(entries),
                )
            except Exception as exc:  # log writing never stops plugin work
                log.error("could not write plugin log entries", count=len(entries), error=repr(exc))
