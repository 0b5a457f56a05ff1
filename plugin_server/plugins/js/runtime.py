"""The JS runtime for one plugin config: load (VM + setupPlugin), calls that record their
failures on the config (spec plugins.md §2.4, §2.9, §2.10, §3), and teardown.

Which runtime a plugin gets: `main` ending in `.py`, or a `source` plugin whose first line is
`# posthog-plugin: python`, runs in the Python sandbox; everything else runs here.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

from plugin_server.plugins.js.host import JSPluginHost
from plugin_server.plugins.js.isolate import JSError
from plugin_server.plugins.js.transpile import Transpiler
from plugin_server.plugins.js.vm import CallFailed, JSPluginVM, PluginLoadError, VMBroken, VMSpec

PYTHON_SOURCE_MARKER = "# posthog-plugin: python"


def is_js_plugin(main: str | None, source: str | None = None) -> bool:
    """Runtime choice: `main` decides for archives and local plugins, the marker line for source plugins."""
    if main is not None:
        return not main.endswith(".py")
    first_line = (source or "").lstrip("\ufeff").split("\n", 1)[0].strip()
    return first_line != PYTHON_SOURCE_MARKER


@dataclass(slots=True)
class ProcessResult:
    """What one processEvent call left: the event to go on with, and whether the plugin failed."""

    event: dict[str, Any] | None
    failed: bool


class JSPlugin:
    """A loaded JS plugin config. `await JSPlugin.load(...)` raises PluginLoadError on failure,
    after writing the log entries and the config error of spec §2.5 items 1-2."""

    def __init__(self, vm: JSPluginVM, host: JSPluginHost) -> None:
        self.vm = vm
        self.host = host

    @classmethod
    async def load(cls, spec: VMSpec, host: JSPluginHost, transpiler: Transpiler) -> JSPlugin:
        vm: JSPluginVM | None = None
        try:
            vm = await JSPluginVM.create(spec, host, transpiler)
            if vm.has_method("setupPlugin"):
                await vm.call_method("setupPlugin")
        except (PluginLoadError, CallFailed, VMBroken) as exc:
            error = _error_of(exc)
            if vm is not None:
                await vm.close()
            await host.log("SYSTEM", "ERROR", error.message)
            await host.record_error(error)
            raise PluginLoadError(error) from exc
        await host.log("SYSTEM", "INFO", f"Plugin loaded (instance ID {host.instance_id}).")
        return cls(vm, host)

    async def process_event(self, event: dict[str, Any]) -> ProcessResult:
        """processEvent with the team_id check of spec §3.2. On failure the event goes on as the
        plugin left it (JS mutates in place); a timed-out call's late mutations are not taken."""
        if not self.vm.has_method("processEvent"):
            return ProcessResult(event, False)
        team_id = event.get("team_id")
        try:
            result = await self.vm.call_method("processEvent", event)
        except CallFailed as exc:
            current = exc.input if isinstance(exc.input, dict) else event
            await self.host.record_error(exc.error, current)
            return ProcessResult(current, True)
        except VMBroken as exc:
            await self.host.record_error(JSError("Error", str(exc)), event)
            return ProcessResult(event, True)
        if not result:
            return ProcessResult(None, False)
        if isinstance(result, dict) and result.get("team_id") != team_id:
            result["team_id"] = team_id
            await self.host.record_error(
                JSError("IllegalOperationError", "Plugin tried to change event.team_id"), result
            )
            return ProcessResult(result, True)
        return ProcessResult(result, False)

    async def on_event(self, event: dict[str, Any]) -> None:
        name = "onSnapshot" if event.get("event") == "$snapshot" else "onEvent"
        if self.vm.has_method(name):
            await self._call_recorded(self.vm.call_method(name, copy.deepcopy(event)), event)

    async def run_task(self, name: str) -> Any:
        return await self._call_recorded(self.vm.run_task(name), None)

    async def run_job(self, name: str, payload: Any) -> Any:
        return await self._call_recorded(self.vm.run_job(name, payload), None)

    async def teardown(self) -> None:
        """teardownPlugin if any, with the log lines of spec §2.9, then free the isolate."""
        instance = self.host.instance_id
        try:
            if self.vm.has_method("teardownPlugin"):
                await self.vm.call_method("teardownPlugin")
        except (CallFailed, VMBroken) as exc:
            await self.host.record_error(_error_of(exc))
            await self.host.log("SYSTEM", "ERROR", f"Plugin failed to unload (instance ID {instance}).")
        else:
            await self.host.log("SYSTEM", "INFO", f"Plugin unloaded (instance ID {instance}).")
        finally:
            await self.vm.close()

    async def _call_recorded(self, call: Any, event: dict[str, Any] | None) -> Any:
        try:
            return await call
        except (CallFailed, VMBroken) as exc:
            await self.host.record_error(_error_of(exc), event)
            return None


def _error_of(exc: BaseException) -> JSError:
    if isinstance(exc, PluginLoadError | CallFailed):
        return exc.error
    return JSError("Error", str(exc))


async def gather_quietly(*calls: Any) -> None:
    """Run onEvent-style calls concurrently; their failures are already recorded."""
    await asyncio.gather(*calls, return_exceptions=True)
