"""The Prometheus registry every module registers its metrics on, served at /metrics."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

SERVER_INFO = Info("plugin_server", "Version and instance of this server", registry=REGISTRY)
SERVICE_UP = Gauge(
    "plugin_server_service_running", "1 while a supervised service runs", ["service"], registry=REGISTRY
)
SERVICE_RESTARTS = Gauge(
    "plugin_server_service_restarts",
    "Times a supervised service was restarted",
    ["service"],
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)
