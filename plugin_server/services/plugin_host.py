"""What the host services need from the loaded plugins, and what they know of a plugin config.

The plugin registry (loading, sandboxes) implements these protocols; the scheduler, the job
queue, the reload listener and the export buffers only talk to plugins through them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

SCHEDULED_TASKS = ("runEveryMinute", "runEveryHour", "runEveryDay")


@dataclass(frozen=True, slots=True)
class PluginConfigRef:
    """The identity of one loaded plugin config, as host services need it."""

    id: int
    team_id: int
    plugin_id: int
    plugin_name: str
    plugin_tag: str | None = None
    organization_id: str | None = None


class PluginCallError(Exception):
    """A plugin function raised (or timed out). `retry` is true for the plugin's RetryError."""

    def __init__(self, name: str, message: str, *, retry: bool = False, stack: str = "") -> None:
        super().__init__(f"{name}: {message}" if name else message)
        self.name = name
        self.message = message
        self.retry = retry
        self.stack = stack


class JobRetry(Exception):
    """Raised by a job handler to have the job queue run the job again later, with back-off."""


class ScheduledTaskHost(Protocol):
    def scheduled_configs(self) -> Mapping[str, Sequence[int]]:
        """{"runEveryMinute": [plugin config ids], "runEveryHour": [...], "runEveryDay": [...]}."""
        ...

    async def run_scheduled_task(self, plugin_config_id: int, task: str) -> Any:
        """Run one scheduled task; plugin errors are recorded by the host, not raised."""
        ...


class JobHost(Protocol):
    async def run_job(self, plugin_config_id: int, job_type: str, payload: Any) -> None:
        """Run one plugin job. Raise `JobRetry` (or any error of the host itself) to have the
        job retried; plugin errors that should not be retried are recorded and swallowed."""
        ...


@runtime_checkable
class WorkerLoad(Protocol):
    """How busy the plugin workers are, for back-pressure (services §1.6.1)."""

    def workers_full(self) -> bool: ...

    async def wait_drained(self) -> None:
        """Return once no plugin work is queued."""
        ...


class ReloadHost(Protocol):
    async def reload_plugins(self) -> None:
        """Re-read plugin configs in force; load changed ones, tear down removed or disabled ones
        (their export buffers are flushed before teardown)."""
        ...


@runtime_checkable
class ActionReloadHost(Protocol):
    async def reload_action(self, team_id: int, action_id: int) -> None: ...

    async def drop_action(self, team_id: int, action_id: int) -> None: ...


class ExportHost(Protocol):
    def config_ref(self, plugin_config_id: int) -> PluginConfigRef | None:
        """The loaded config with this id, if any."""
        ...

    async def export_events(self, plugin_config_id: int, events: Sequence[dict[str, Any]]) -> None:
        """Call the plugin's exportEvents; raises PluginCallError (retry=True for RetryError)."""
        ...

    async def record_error(self, plugin_config_id: int, error: PluginCallError) -> None: ...


class PluginHost(ScheduledTaskHost, JobHost, ExportHost, Protocol):
    """Everything the plugin registry offers the services that drive plugins."""

    async def reload_plugins(self) -> None: ...
