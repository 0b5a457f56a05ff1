"""Turns a plugin's source text into a module inside the sandbox and lists what it exports."""

from __future__ import annotations

import inspect
import linecache
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.meta import IllegalOperationError

METHODS = ("setup_plugin", "teardown_plugin", "export_events", "on_event", "on_snapshot", "process_event")
RUN_EVERY_PREFIX = "run_every_"
METRIC_KINDS = ("sum", "max", "min")


@dataclass(slots=True)
class PluginModule:
    namespace: dict[str, Any]
    functions: dict[str, Callable[..., Any]]  # methods and run_every_* tasks by Python name
    jobs: dict[str, Callable[..., Any]]
    metrics: dict[str, str]

    def exports(self) -> dict[str, Any]:
        return {
            "methods": [name for name in METHODS if name in self.functions],
            "run_every": [name for name in self.functions if name.startswith(RUN_EVERY_PREFIX)],
            "jobs": list(self.jobs),
            "metrics": dict(self.metrics),
        }


def compile_plugin(
    source: str, filename: str, builtins_ns: dict[str, Any], module_name: str
) -> dict[str, Any]:
    """Compile and run the module body; returns its namespace."""
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    code = compile(source, filename, "exec", dont_inherit=True)
    module = types.ModuleType(module_name)
    module.__dict__.update({"__builtins__": builtins_ns, "__file__": filename})
    sys.modules.pop(module_name, None)
    exec(code, module.__dict__)
    return module.__dict__


def collect_exports(namespace: dict[str, Any]) -> PluginModule:
    functions: dict[str, Callable[..., Any]] = {}
    for name in METHODS:
        value = namespace.get(name)
        if callable(value):
            functions[name] = value
    batch = namespace.get("process_event_batch")
    if "process_event" not in functions and callable(batch):
        functions["process_event"] = _single_from_batch(batch)
    for name, value in namespace.items():
        if name.startswith(RUN_EVERY_PREFIX) and callable(value):
            functions[name] = value
    jobs_value = namespace.get("jobs")
    jobs = {str(k): v for k, v in jobs_value.items()} if isinstance(jobs_value, dict) else {}
    return PluginModule(namespace, functions, jobs, declared_metrics(namespace.get("metrics")))


def declared_metrics(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    metrics = {str(k): v.lower() for k, v in value.items() if isinstance(v, str)}
    invalid = [kind for kind in metrics.values() if kind not in METRIC_KINDS]
    if invalid:
        raise IllegalOperationError(
            "Only 'sum', 'max', and 'min' are supported as metric types. Invalid types received: "
            + ", ".join(invalid)
        )
    return metrics


def _single_from_batch(batch: Callable[..., Any]) -> Callable[..., Any]:
    async def process_event(event: Any, meta: Any) -> Any:
        result = batch([event], meta)
        if inspect.isawaitable(result):
            result = await result
        return result[0] if result else None

    return process_event
