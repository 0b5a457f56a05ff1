"""One plugin config's life: lazy load, retries with back-off, disabling, teardown (§2.3-2.5, §2.9)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plugin_server.logs import get_logger
from plugin_server.plugins import queries
from plugin_server.plugins.capabilities import save_capabilities, save_metrics, save_public_jobs
from plugin_server.plugins.host_services import PluginContext
from plugin_server.plugins.loader import SourceNotFound, load_plugin_source
from plugin_server.plugins.logs import LogTarget
from plugin_server.plugins.registry import PluginConfig
from plugin_server.plugins.runtime import PluginRuntime, RuntimeSpec

if TYPE_CHECKING:
    from plugin_server.plugins.runner import PluginRunner

log = get_logger(__name__)

MAX_LOAD_ATTEMPTS = 10
FIRST_RETRY_SECONDS = 3.0


def retry_delay_seconds(attempt: int) -> float:
    """Delay after failed attempt `attempt` (1-based): 3 s, 6 s, 12 s, ... 768 s."""
    return FIRST_RETRY_SECONDS * 2 ** (attempt - 1)


@dataclass(frozen=True, slots=True)
class ConfigInfo:
    """What other services see of a loaded plugin config."""

    id: int
    team_id: int | None
    plugin_id: int
    plugin_name: str | None
    order: int
    capabilities: dict[str, Any]
    ready: bool


class LoadedConfig:
    def __init__(self, config: PluginConfig, key: str, runner: PluginRunner) -> None:
        self.config = config
        self.key = key
        self.runner = runner
        self.runtime: PluginRuntime | None = None
        self.exports: dict[str, Any] | None = None
        self.attempts = 0
        self.disabled = False
        self._ready: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._retry: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.context = PluginContext(
            plugin_config_id=config.id,
            plugin_id=config.plugin_id,
            team_id=config.team_id,
            plugin_name=config.plugin.name or "",
            organization_id=config.plugin.organization_id,
        )
        self.target = LogTarget(config.team_id or 0, config.plugin_id, config.id)

    @property
    def id(self) -> int:
        return self.config.id

    @property
    def label(self) -> str:
        return f"{self.config.plugin.name} ({self.config.id})"

    def has(self, method: str) -> bool:
        return self.exports is not None and method in self.exports.get("methods", [])

    def info(self) -> ConfigInfo:
        c = self.config
        return ConfigInfo(
            c.id,
            c.team_id,
            c.plugin_id,
            c.plugin.name,
            c.order,
            c.plugin.capabilities,
            self.exports is not None,
        )

    async def wait(self) -> dict[str, Any] | None:
        """The exports once loaded; None while failed or waiting for a retry."""
        return await asyncio.shield(self._ready)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._attempt())

    def cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self._ready.done():
            self._ready.set_result(None)

    # ------------------------------------------------------------------ loading
    async def _attempt(self) -> None:
        runner = self.runner
        attempt = self.attempts + 1
        self.attempts = attempt
        try:
            source = load_plugin_source(self.config.plugin, runner.settings.base_dir)
        except SourceNotFound as exc:
            await self._fail_for_good(str(exc))
            return
        except Exception as exc:
            await self._fail_for_good({"name": type(exc).__name__, "message": str(exc), "stack": ""})
            return
        if self.runtime is not None:
            await self.runtime.close()
        if runner.before_load is not None:
            await runner.before_load(self)
        spec = RuntimeSpec(self.key, self.config, source, self.context, runner.settings.task_timeout)
        self.runtime = runner.make_runtime(source.runtime, spec)
        outcome = await self.runtime.load()
        if outcome.ok:
            await self._loaded(outcome.value)
            return
        error = outcome.error or {"name": "Error", "message": "load failed", "stack": ""}
        await self.runtime.close()
        runner.logs.write(self.target, "SYSTEM", "ERROR", str(error.get("message", "")))
        await runner.errors.record(self.target, error)
        instance = runner.instance_id
        if attempt < MAX_LOAD_ATTEMPTS:
            delay = retry_delay_seconds(attempt)
            runner.logs.write(
                self.target,
                "SYSTEM",
                "ERROR",
                f"Plugin failed to load (instance ID {instance}). Retrying in {delay:g} s.",
            )
            self._resolve(None)
            self._retry = asyncio.get_running_loop().call_later(
                delay * runner.retry_delay_scale, self._retry_now
            )
        else:
            times = "time" if attempt == 1 else "times"
            runner.logs.write(
                self.target,
                "SYSTEM",
                "ERROR",
                f"Plugin failed to load (instance ID {instance}). Disabling it due to too many retries – "
                f"tried to load it {attempt} {times} before giving up.",
            )
            self.disabled = True
            await runner.pg.execute(queries.DISABLE_CONFIG, self.config.id)
            self._resolve(None)

    def _retry_now(self) -> None:
        self._retry = None
        self._ready = asyncio.get_running_loop().create_future()
        self.start()

    async def _loaded(self, exports: dict[str, Any]) -> None:
        runner = self.runner
        self.exports = exports
        runner.logs.write(self.target, "SYSTEM", "INFO", f"Plugin loaded (instance ID {runner.instance_id}).")
        try:
            await save_metrics(runner.pg, self.config.plugin, exports)
            await save_capabilities(runner.pg, self.config.plugin, exports)
            await save_public_jobs(runner.pg, self.config.plugin, exports)
            if self.config.error is not None:
                await runner.errors.clear(self.config.id)
                self.config.error = None
        except Exception as exc:
            log.error("could not save plugin capabilities", plugin_config_id=self.id, error=repr(exc))
        self._resolve(exports)

    async def _fail_for_good(self, error: dict[str, Any] | str) -> None:
        message = error if isinstance(error, str) else str(error.get("message"))
        self.runner.logs.write(self.target, "SYSTEM", "ERROR", message)
        await self.runner.errors.record(self.target, error)
        self._resolve(None)

    def _resolve(self, exports: dict[str, Any] | None) -> None:
        if not self._ready.done():
            self._ready.set_result(exports)

    # ------------------------------------------------------------------ teardown
    async def teardown(self) -> None:
        runner = self.runner
        self.cancel_retry()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), runner.settings.task_timeout)
            except TimeoutError:
                pass
        instance = runner.instance_id
        if runner.before_teardown is not None and self.exports is not None:
            try:
                await runner.before_teardown(self.id)
            except Exception as exc:
                log.error("could not flush before teardown", plugin_config_id=self.id, error=repr(exc))
        if self.runtime is not None and self.exports is not None:
            outcome = await self.runtime.teardown(runner.settings.task_timeout)
            if not outcome.ok and outcome.error is not None:
                await runner.errors.record(self.target, outcome.error)
                runner.logs.write(
                    self.target, "SYSTEM", "ERROR", f"Plugin failed to unload (instance ID {instance})."
                )
            else:
                runner.logs.write(self.target, "SYSTEM", "INFO", f"Plugin unloaded (instance ID {instance}).")
        else:
            runner.logs.write(self.target, "SYSTEM", "INFO", f"Plugin unloaded (instance ID {instance}).")
        if self.runtime is not None:
            await self.runtime.close()
        self.exports = None


Reuse = Callable[[PluginConfig, PluginConfig], bool]


def same_generation(old: PluginConfig, new: PluginConfig) -> bool:
    """Reuse a loaded config when neither row changed (timestamps compared as timestamps, 8.20)
    and its attachments are the same (8.23)."""
    return (
        old.updated_at == new.updated_at
        and old.tenant == new.tenant
        and old.plugin.updated_at == new.plugin.updated_at
        and old.attachment_fingerprint() == new.attachment_fingerprint()
    )
