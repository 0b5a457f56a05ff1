"""The request channel from plugin code to the host: a registry of named services.

A sandbox sends `name + args` for a plugin config; the host looks the service up here and calls
it with the config's PluginContext. Anything may register a service (cache, storage, fetch,
geoip, jobs, capture, ...); the answer goes back to the plugin as the awaited value, and an
exception goes back as the same-named exception.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PluginContext:
    """Who is asking: the plugin config a request comes from."""

    plugin_config_id: int
    plugin_id: int
    team_id: int | None
    plugin_name: str
    organization_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


ServiceHandler = Callable[..., Awaitable[Any] | Any]


class ServiceNotFound(LookupError):
    pass


class HostServices:
    def __init__(self) -> None:
        self._handlers: dict[str, ServiceHandler] = {}

    def register(self, name: str, handler: ServiceHandler) -> None:
        """`handler(context, *args)`, sync or async; replaces an earlier handler of that name."""
        self._handlers[name] = handler

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def has(self, name: str) -> bool:
        return name in self._handlers

    async def call(self, context: PluginContext, name: str, args: list[Any]) -> Any:
        handler = self._handlers.get(name)
        if handler is None:
            raise ServiceNotFound(unavailable_message(name))
        result = handler(context, *args)
        if inspect.isawaitable(result):
            result = await result
        return result


def unavailable_message(name: str) -> str:
    if name == "geoip.locate":
        return "IP location capabilities are not available in this PostHog instance!"
    if name == "jobs.enqueue":
        return "No JobQueue available"
    return f"The host service '{name}' is not available in this PostHog instance!"
