"""Plugin errors as stored in posthog_pluginconfig.error and echoed to the plugin's log (§2.10)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from plugin_server.logs import get_logger
from plugin_server.plugins import queries
from plugin_server.plugins.logs import LogTarget, PluginLogSink

log = get_logger(__name__)


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plugin_error(error: dict[str, Any] | str, event: Any = None) -> dict[str, Any]:
    """The PluginError JSON: {message, time[, name, stack, event]} (plain strings: message and time)."""
    if isinstance(error, str):
        return {"message": error, "time": iso_now()}
    shaped: dict[str, Any] = {
        "message": error.get("message", ""),
        "time": iso_now(),
        "name": error.get("name", "Error"),
        "stack": error.get("stack", ""),
    }
    if event is not None:
        shaped["event"] = event
    return shaped


class ErrorRecorder:
    def __init__(self, pg: asyncpg.Pool, logs: PluginLogSink) -> None:
        self.pg = pg
        self.logs = logs

    async def record(self, target: LogTarget, error: dict[str, Any] | str, event: Any = None) -> None:
        shaped = plugin_error(error, event)
        self.logs.write(target, "PLUGIN", "ERROR", shaped["message"], datetime.fromisoformat(shaped["time"]))
        try:
            await self.pg.execute(queries.SET_CONFIG_ERROR, shaped, target.plugin_config_id)
        except Exception as exc:
            log.error(
                "could not save plugin error", plugin_config_id=target.plugin_config_id, error=repr(exc)
            )

    async def clear(self, plugin_config_id: int) -> None:
        await self.pg.execute(queries.CLEAR_CONFIG_ERROR, plugin_config_id)
