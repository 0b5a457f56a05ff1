"""The contracts between queue consumers, the ingestion pipeline and the plugin runner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from plugin_server.ingestion.types import IncomingEvent, Outcome, PluginEvent


class Ingestor(Protocol):
    """Ingests a batch. When `ingest` returns, every effect of every event is durable
    (saved, or dead-lettered with its reason), so the consumer may acknowledge the batch.
    Raising means an infrastructure failure: the consumer keeps the batch and retries."""

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]: ...


@runtime_checkable
class StagedIngestor[PreparedT](Protocol):
    """An `Ingestor` in two stages, so a consumer can overlap batches: `prepare` of the next batch
    may run while `commit` of the current one is in progress. `prepare` runs the plugins and works
    out every event's effects without saving any of them (lookups such as group types may be
    registered); `commit` makes them durable (saved or dead-lettered) and must be called in batch
    order, one batch at a time. `ingest(batch)` is `commit(await prepare(batch))`."""

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]: ...

    async def prepare(self, batch: Sequence[IncomingEvent]) -> PreparedT: ...

    async def commit(self, prepared: PreparedT) -> list[Outcome]: ...


class EventPluginRunner(Protocol):
    """Runs the teams' enabled plugins on events (each event carries its team_id)."""

    async def process_events(self, events: Sequence[PluginEvent]) -> list[PluginEvent | None]:
        """The processEvent chain; None where a plugin dropped the event."""
        ...

    def on_events_ingested(self, events: Sequence[PluginEvent]) -> None:
        """Hand ingested events to onEvent/onSnapshot without waiting for them."""
        ...


class NoPlugins:
    """The plugin runner when no plugin is enabled (or in tests of the pipeline alone)."""

    async def process_events(self, events: Sequence[PluginEvent]) -> list[PluginEvent | None]:
        return list(events)

    def on_events_ingested(self, events: Sequence[PluginEvent]) -> None:
        return None
