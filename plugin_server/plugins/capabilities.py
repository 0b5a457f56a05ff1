"""Capabilities and metric declarations saved on posthog_plugin with the JS names (§2.6, §2.7)."""

from __future__ import annotations

from typing import Any

import asyncpg

from plugin_server.plugins import queries
from plugin_server.plugins.registry import Plugin

# Python hook name -> the JS name the PostHog app knows, in the order capabilities list them.
METHOD_NAMES = {
    "setup_plugin": "setupPlugin",
    "teardown_plugin": "teardownPlugin",
    "export_events": "exportEvents",
    "on_event": "onEvent",
    "on_snapshot": "onSnapshot",
    "process_event": "processEvent",
}
EXPORT_JOBS = ("exportEventsWithRetry", "exportEventsFromTheBeginning", "Export historical events")
# the job PostHog's UI shows a run button for (plugins §3.9)
HISTORICAL_EXPORT_PUBLIC_JOB = "Export historical events"
EXPORT_METRICS = (
    "events_seen",
    "events_delivered_successfully",
    "undelivered_events",
    "retry_errors",
    "other_errors",
)


def python_task_name(name: str) -> str:
    """runEveryMinute -> run_every_minute (Python names pass through)."""
    if "_" in name or name.islower():
        return name
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def js_task_name(python_name: str) -> str:
    """run_every_minute -> runEveryMinute."""
    head, *rest = python_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def capabilities_from_exports(exports: dict[str, Any]) -> dict[str, list[str]]:
    methods = set(exports.get("methods", []))
    jobs = list(exports.get("jobs", []))
    if "export_events" in methods:
        # the host adds the export buffer (on_event, teardown) and its jobs
        methods |= {"setup_plugin", "teardown_plugin", "on_event"}
        jobs += [j for j in EXPORT_JOBS if j not in jobs]
    return {
        "scheduled_tasks": [js_task_name(n) for n in exports.get("run_every", [])],
        "jobs": jobs,
        "methods": [js for py, js in METHOD_NAMES.items() if py in methods],
    }


def metrics_from_exports(exports: dict[str, Any]) -> dict[str, str]:
    metrics = dict(exports.get("metrics", {}))
    if "export_events" in exports.get("methods", []):
        for name in EXPORT_METRICS:
            metrics[name] = "sum"
    return metrics


async def save_capabilities(pg: asyncpg.Pool, plugin: Plugin, exports: dict[str, Any]) -> bool:
    """Write when different from the stored value (order-sensitive, as the original compares)."""
    capabilities = capabilities_from_exports(exports)
    if plugin.capabilities == capabilities:
        return False
    await pg.execute(queries.UPDATE_CAPABILITIES, capabilities, plugin.id)
    plugin.capabilities = capabilities
    return True


async def save_metrics(pg: asyncpg.Pool, plugin: Plugin, exports: dict[str, Any]) -> bool:
    metrics = metrics_from_exports(exports)
    if (plugin.metrics or {}) == metrics:
        return False
    await pg.execute(queries.UPDATE_METRICS, metrics, plugin.id)
    plugin.metrics = metrics
    return True


ADD_PUBLIC_JOB = """
UPDATE posthog_plugin
SET public_jobs = COALESCE(public_jobs, '{}'::jsonb) || jsonb_build_object($1::text, '{}'::jsonb)
WHERE id = $2 AND (public_jobs IS NULL OR NOT public_jobs ? $1::text)
"""


async def save_public_jobs(pg: asyncpg.Pool, plugin: Plugin, exports: dict[str, Any]) -> bool:
    """An exporting plugin gets the "Export historical events" run button, unless it has that
    key already (a payload schema the plugin declared is kept)."""
    if "export_events" not in exports.get("methods", []):
        return False
    if HISTORICAL_EXPORT_PUBLIC_JOB in (plugin.public_jobs or {}):
        return False
    await pg.execute(ADD_PUBLIC_JOB, HISTORICAL_EXPORT_PUBLIC_JOB, plugin.id)
    plugin.public_jobs = {**(plugin.public_jobs or {}), HISTORICAL_EXPORT_PUBLIC_JOB: {}}
    return True
