"""The host services a plugin asks for through the sandbox channel, by operation name.

`HostServices.call(ref, op, args)` answers one request from a plugin config's sandbox with plain
data (str/bytes/int/float/None, tuples and dicts of them) or raises; the sandbox turns the
exception into an error inside the plugin. Operations and their arguments:

- `geoip.locate` (ip) -> City record dict | None
- `jobs.enqueue` (job_type, payload, timestamp_ms) -> None
- `posthog.capture` (event, properties) -> None
- `posthog.api` (method, path, options) -> (status, status_text, url, headers, body)
- `fetch` (url, method, headers, body, timeout) -> (status, status_text, url, headers, body)
- `metric` (name, operation, value) -> None
"""

from __future__ import annotations

import time
from typing import Any

from plugin_server.services.capture import PluginCapture
from plugin_server.services.fetch import PluginFetch, plain_headers
from plugin_server.services.geoip import GeoIp
from plugin_server.services.jobs import EnqueuedJob, JobQueueManager
from plugin_server.services.plugin_host import PluginConfigRef
from plugin_server.services.plugin_metrics import PluginMetrics
from plugin_server.services.posthog_api import PosthogApi

OPERATIONS = ("geoip.locate", "jobs.enqueue", "posthog.capture", "posthog.api", "fetch", "metric")


class UnknownOperation(ValueError):
    pass


class HostServices:
    def __init__(
        self,
        *,
        geoip: GeoIp,
        jobs: JobQueueManager,
        capture: PluginCapture,
        api: PosthogApi,
        fetch: PluginFetch,
        metrics: PluginMetrics,
    ) -> None:
        self.geoip = geoip
        self.jobs = jobs
        self.capture = capture
        self.api = api
        self.fetch = fetch
        self.metrics = metrics

    async def call(self, ref: PluginConfigRef, op: str, args: tuple[Any, ...]) -> Any:
        if op == "geoip.locate":
            (ip,) = args
            return self.geoip.locate(ip)
        if op == "jobs.enqueue":
            job_type, payload, timestamp = args
            await self.enqueue_job(ref, str(job_type), payload, timestamp)
            return None
        if op == "posthog.capture":
            event, properties = args
            await self.capture.capture(ref, event, properties)
            return None
        if op == "posthog.api":
            method, path, options = args
            response = await self.api.call(ref, method, path, options)
            return response.as_plain()
        if op == "fetch":
            url, method, headers, body, timeout = args
            response = await self.fetch.fetch(
                url, method=method or "GET", headers=plain_headers(headers), body=body, time_limit=timeout
            )
            return response.as_plain()
        if op == "metric":
            name, operation, value = args
            self.metrics.update(ref, str(name), str(operation), value)
            return None
        raise UnknownOperation(f"unknown host operation {op!r}")

    async def enqueue_job(
        self, ref: PluginConfigRef, job_type: str, payload: Any, timestamp: int | float | None = None
    ) -> None:
        due = int(timestamp) if timestamp is not None else int(time.time() * 1000)
        await self.jobs.enqueue(EnqueuedJob(job_type, payload, due, ref.id, ref.team_id))
