"""The runtime seam: what the lifecycle needs from whatever runs a plugin config's code.

A runtime is created per loaded plugin config. Method names are the Python hook names
(`process_event`, `run_every_minute`, `job:<name>`, ...); a JS runtime maps them to its own.
`PythonSandboxRuntime` runs Python plugins in the sub-interpreter pool; other runtimes are
registered by name on the PluginRunner (`runtimes={"js": factory}`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from plugin_server.plugins.host_services import PluginContext
from plugin_server.plugins.loader import PluginSource
from plugin_server.plugins.pool import CallOutcome, SandboxPool
from plugin_server.plugins.registry import PluginConfig


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    key: str  # unique per loaded generation of a plugin config
    config: PluginConfig
    source: PluginSource
    context: PluginContext
    task_timeout: float


class PluginRuntime(Protocol):
    async def load(self) -> CallOutcome:
        """Evaluate the code and run setup_plugin; on success `value` is the exports:
        {"methods": [...], "run_every": [...], "jobs": [...], "metrics": {...}}."""
        ...

    async def call(self, method: str, batch: Sequence[list[Any]], time_limit: float) -> list[CallOutcome]:
        """Run `method` once per args list (meta is appended by the runtime)."""
        ...

    async def teardown(self, time_limit: float) -> CallOutcome:
        """Run teardown_plugin wherever setup_plugin ran."""
        ...

    async def close(self) -> None: ...


RuntimeFactory = Callable[[RuntimeSpec], PluginRuntime]


def meta_spec(spec: RuntimeSpec) -> dict[str, Any]:
    """The plain data a sandbox builds `meta` from."""
    config = spec.config
    return {
        "plugin_config_id": config.id,
        "plugin_id": config.plugin_id,
        "team_id": config.team_id,
        "plugin_name": config.plugin.name,
        "config": config.config,
        "attachments": {
            key: {"content_type": a.content_type, "file_name": a.file_name, "contents": a.contents}
            for key, a in config.attachments.items()
        },
        "timeout": spec.task_timeout,
        "plugin_dir": spec.source.plugin_dir,
        "filename": f"<plugin {config.id}: {spec.source.main}>",
    }


class PythonSandboxRuntime:
    def __init__(self, pool: SandboxPool, spec: RuntimeSpec) -> None:
        self.pool = pool
        self.spec = spec
        self.exports: dict[str, Any] = {}

    async def load(self) -> CallOutcome:
        self.pool.register(
            self.spec.key,
            meta_spec(self.spec),
            self.spec.source.text,
            self.spec.context,
            self.spec.config.tenant,
        )
        outcome = await self.pool.load(self.spec.key)
        if outcome.ok:
            self.exports = outcome.value
        return outcome

    async def call(self, method: str, batch: Sequence[list[Any]], time_limit: float) -> list[CallOutcome]:
        return await self.pool.call(self.spec.key, method, batch, time_limit)

    async def teardown(self, time_limit: float) -> CallOutcome:
        if "teardown_plugin" not in self.exports.get("methods", []):
            return CallOutcome(True)
        failure: CallOutcome | None = None
        for sandbox in self.pool.loaded_in(self.spec.key):
            [outcome] = await self.pool.call(
                self.spec.key, "teardown_plugin", [[]], time_limit, sandbox=sandbox
            )
            if not outcome.ok:
                failure = outcome
        return failure or CallOutcome(True)

    async def close(self) -> None:
        await self.pool.unload(self.spec.key)


class UnsupportedRuntime:
    """Stands in for a runtime that is not installed: loading fails with a clear error."""

    def __init__(self, name: str, spec: RuntimeSpec) -> None:
        self.name = name

    async def load(self) -> CallOutcome:
        return CallOutcome.failure("Error", f"No {self.name} plugin runtime is available in this server")

    async def call(self, method: str, batch: Sequence[list[Any]], time_limit: float) -> list[CallOutcome]:
        return [CallOutcome.failure("Error", "plugin not loaded") for _ in batch]

    async def teardown(self, time_limit: float) -> CallOutcome:
        return CallOutcome(True)

    async def close(self) -> None:
        return None
