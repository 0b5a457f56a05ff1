"""Builds the host services plugins call and the services that drive plugins, from the settings.

`build_host_services` runs before plugins load (their setup may already enqueue jobs or look up
IPs) and publishes `HostServices` as `ctx.extras["host_services"]`. `build_plugin_drivers` runs
once the plugin registry exists: the scheduler, the job-queue consumer, the reload listener and
the export buffers (published as `ctx.extras["export_buffers"]`) and the historical export
(`ctx.extras["historical_export"]`, reading Postgres or, in Kafka mode, ClickHouse).
"""

from __future__ import annotations

from typing import Any

from plugin_server.context import AppContext
from plugin_server.db.redis import create_redis
from plugin_server.services.capture import PluginCapture
from plugin_server.services.event_sources import ClickHouseEventSource, build_event_source
from plugin_server.services.export_events import ExportEventsBuffers
from plugin_server.services.fetch import PluginFetch
from plugin_server.services.geoip import GeoIp
from plugin_server.services.historical_export import HistoricalExport, HistoricalExportHost
from plugin_server.services.host_api import HostServices
from plugin_server.services.jobs import JobQueueConsumer, JobQueueManager, build_job_queues
from plugin_server.services.plugin_host import ActionReloadHost, PluginConfigRef, PluginHost, WorkerLoad
from plugin_server.services.plugin_metrics import PluginMetrics
from plugin_server.services.posthog_api import PosthogApi
from plugin_server.services.reload import ReloadListener
from plugin_server.services.scheduler import Scheduler
from plugin_server.supervisor import Service


def build_host_services(ctx: AppContext) -> list[Service]:
    settings = ctx.settings
    geoip = GeoIp(
        disabled=settings.disable_mmdb,
        postgres=ctx.postgres,
        redis=ctx.redis,
        file_path=settings.mmdb_file_path,
    )
    fetch = PluginFetch(allow_private=settings.plugin_fetch_allow_private)
    jobs = build_job_queues(
        settings.job_queue_kinds,
        schema=settings.job_queue_graphile_schema,
        dsn=settings.job_queue_graphile_url or None,
        pool=ctx.postgres,
        crash_if_none=settings.crash_if_no_persistent_job_queue,
    )
    producer = ctx.extras.get("kafka_producer") if settings.kafka_enabled else None
    capture = PluginCapture(
        ctx.redis,
        celery_queue=settings.plugins_celery_queue,
        kafka_producer=producer,
        kafka_topic=settings.kafka_consumption_topic,
    )
    metrics = PluginMetrics(capture.capture)
    host = HostServices(
        geoip=geoip,
        jobs=jobs,
        capture=capture,
        api=PosthogApi(ctx.postgres, fetch),
        fetch=fetch,
        metrics=metrics,
    )
    ctx.extras["host_services"] = host
    ctx.extras["job_queues"] = jobs
    return [geoip, fetch, jobs, metrics]


def build_plugin_drivers(ctx: AppContext, plugins: PluginHost) -> list[Service]:
    settings = ctx.settings
    host: HostServices = ctx.extras["host_services"]
    jobs: JobQueueManager = ctx.extras["job_queues"]

    async def enqueue_export_retry(
        config_id: int, job_type: str, payload: dict[str, Any], run_at: int
    ) -> None:
        ref = plugins.config_ref(config_id)
        if ref is None:
            raise LookupError(f"plugin config {config_id} is not loaded")
        await host.enqueue_job(ref, job_type, payload, run_at)

    def increment_metric(config_id: int, name: str, value: float) -> None:
        ref = plugins.config_ref(config_id)
        if ref is not None:
            host.metrics.increment(ref, name, value)

    ctx.extras["export_buffers"] = ExportEventsBuffers(
        plugins, enqueue_export_retry, increment_metric, test_mode=settings.env_class == "test"
    )
    drivers: list[Service] = []
    if isinstance(plugins, HistoricalExportHost):
        source = build_event_source(settings, ctx.postgres)
        if isinstance(source, ClickHouseEventSource):
            drivers.append(source)  # Kafka mode: readiness includes ClickHouse

        async def enqueue_page(
            ref: PluginConfigRef, job_type: str, payload: dict[str, Any], run_at: int
        ) -> None:
            await host.enqueue_job(ref, job_type, payload, run_at)

        ctx.extras["historical_export"] = HistoricalExport(
            ctx.postgres,
            source,
            plugins,
            enqueue_page,
            host.metrics.increment,
            instance_id=ctx.instance_id,
        )
    actions = plugins if isinstance(plugins, ActionReloadHost) else ctx.extras.get("actions")
    return [
        *drivers,
        Scheduler(
            plugins, create_redis(settings, max_connections=2), lock_ttl_seconds=settings.schedule_lock_ttl
        ),
        JobQueueConsumer(
            jobs,
            plugins,
            create_redis(settings, max_connections=2),
            lock_ttl_seconds=settings.schedule_lock_ttl,
            load=plugins if isinstance(plugins, WorkerLoad) else None,
        ),
        ReloadListener(
            create_redis(settings, max_connections=2),
            plugins,
            actions,
            plugins_channel=settings.plugins_reload_pubsub_channel,
        ),
    ]
