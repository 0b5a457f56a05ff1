"""The services that consume the Celery list: the Postgres ingestion pipeline (Postgres mode) and
the consumer feeding it. In Kafka mode the list is still consumed, for plugin jobs only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plugin_server.context import AppContext
from plugin_server.ingestion.actions import ACTIONS
from plugin_server.ingestion.api import NoPlugins
from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.ingestion.pipeline import PostgresIngestor, PreparedBatch
from plugin_server.ingestion.types import IncomingEvent, Outcome
from plugin_server.queues.backpressure import downstream_load
from plugin_server.queues.celery import CeleryConsumer
from plugin_server.services.jobs import EnqueuedJob, JobQueueManager
from plugin_server.supervisor import Service

# Names under which services publish shared objects in AppContext.extras.
PLUGIN_RUNNER = "plugin_runner"
JOB_QUEUES = "job_queues"
INGESTOR = "ingestor"
DEAD_LETTERS = "dead_letters"


class PostgresIngestion:
    """The Postgres-mode pipeline as a service. It is built at start, so it gets the plugin runner
    that an earlier service published (no plugins when none did)."""

    name = "postgres-ingestion"

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._ingestor: PostgresIngestor | None = None

    async def start(self) -> None:
        ctx = self._ctx
        plugins = ctx.extras.get(PLUGIN_RUNNER) or NoPlugins()
        ingestor = PostgresIngestor(
            ctx.postgres, ctx.settings, plugins, ctx.extras[DEAD_LETTERS], actions=ctx.extras.get(ACTIONS)
        )
        await ingestor.start()
        self._ingestor = ingestor
        ctx.extras[INGESTOR] = self

    async def stop(self) -> None:
        if self._ingestor is not None:
            await self._ingestor.stop()

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]:
        return await self._started().ingest(batch)

    async def prepare(self, batch: Sequence[IncomingEvent]) -> PreparedBatch:
        return await self._started().prepare(batch)

    async def commit(self, prepared: PreparedBatch) -> list[Outcome]:
        return await self._started().commit(prepared)

    def _started(self) -> PostgresIngestor:
        if self._ingestor is None:
            raise RuntimeError("the ingestion pipeline is not started")
        return self._ingestor


class PublishedJobQueue:
    """The plugin job queues the host services published, looked up when a job arrives."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def enqueue(self, job: dict[str, Any]) -> None:
        queues: JobQueueManager | None = self._ctx.extras.get(JOB_QUEUES)
        if queues is None:
            raise RuntimeError("no plugin job queue is running")
        await queues.enqueue(EnqueuedJob.from_json(job))


def celery_services(ctx: AppContext) -> list[Service]:
    """In start order: the pipeline (Postgres mode), then the consumer (stopped first)."""
    settings = ctx.settings
    ctx.extras.setdefault(DEAD_LETTERS, PostgresDeadLetterQueue(ctx.postgres))
    services: list[Service] = []
    ingestion: PostgresIngestion | None = None
    if not settings.kafka_enabled:
        ingestion = PostgresIngestion(ctx)
        services.append(ingestion)
    services.append(
        CeleryConsumer(
            ctx.redis,
            settings.plugins_celery_queue,
            instance_id=ctx.instance_id,
            dead_letters=ctx.extras[DEAD_LETTERS],
            ingestor=ingestion,
            jobs=PublishedJobQueue(ctx),
            batch_size=settings.ingestion_batch_size,
            heartbeat_ttl=settings.celery_heartbeat_ttl_seconds,
            on_events=lambda: ctx.activity.touch("ingestEvent"),
            downstream=downstream_load(ctx.extras),
        )
    )
    return services
