"""The host services a plugin reaches beyond cache and storage (geoip, fetch, jobs, capture,
API), answered for a plugin run outside a server: fetch and GeoIP for real, jobs and captured
events recorded for the caller to look at, the PostHog API refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plugin_server.services.fetch import PluginFetch, plain_headers
from plugin_server.services.geoip import GeoIp, GeoIpUnavailable
from plugin_server.services.plugin_host import PluginConfigRef


@dataclass(frozen=True, slots=True)
class EnqueuedJob:
    name: str
    payload: Any
    run_at_ms: float


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    event: str
    properties: dict[str, Any]


@dataclass(slots=True)
class LocalHost:
    """Implements `call(ref, op, args)` as plugin_server/services/host_api.py does."""

    fetch: PluginFetch
    geoip: GeoIp | None = None
    jobs: list[EnqueuedJob] = field(default_factory=list)
    captured: list[CapturedEvent] = field(default_factory=list)

    async def start(self) -> None:
        await self.fetch.start()
        if self.geoip is not None:
            await self.geoip.start()

    async def stop(self) -> None:
        await self.fetch.stop()
        if self.geoip is not None:
            await self.geoip.stop()

    async def call(self, ref: PluginConfigRef, op: str, args: tuple[Any, ...]) -> Any:
        if op == "geoip.locate":
            if self.geoip is None:
                raise GeoIpUnavailable()
            (ip,) = args
            return self.geoip.locate(ip)
        if op == "jobs.enqueue":
            name, payload, run_at_ms = args
            self.jobs.append(EnqueuedJob(str(name), payload, float(run_at_ms)))
            return None
        if op == "posthog.capture":
            event, properties = args
            self.captured.append(CapturedEvent(str(event), dict(properties or {})))
            return None
        if op == "fetch":
            url, method, headers, body, timeout = args
            response = await self.fetch.fetch(
                url, method=method or "GET", headers=plain_headers(headers), body=body, time_limit=timeout
            )
            return response.as_plain()
        raise RuntimeError(f"{op} is not available when a plugin runs outside a PostHog instance")
