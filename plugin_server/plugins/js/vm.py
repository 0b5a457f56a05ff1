"""A JS/TS plugin config's VM: its isolate, its exports, and calls into it (spec plugins.md §2.4, §3).

The VM turns the plugin's calls to `meta`, `console`, `fetch` and `posthog` into calls on a
`JSHost` (the host services bound to this plugin config) and answers them asynchronously, so a
plugin awaiting storage or fetch never blocks anything else.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from plugin_server.plugins.js.isolate import Isolate, IsolateOutOfMemory, IsolateTimeout, JSError
from plugin_server.plugins.js.libraries import libraries_for
from plugin_server.plugins.js.transpile import TranspileError, Transpiler, format_seconds

log = structlog.get_logger(__name__)

METHOD_NAMES = ("setupPlugin", "teardownPlugin", "exportEvents", "onEvent", "onSnapshot", "processEvent")
SCHEDULED_TASKS = ("runEveryMinute", "runEveryHour", "runEveryDay")
# Top-level evaluation gets TASK_TIMEOUT plus 1 ms (spec §5.3); a synchronous stretch of JS gets a
# little longer than TASK_TIMEOUT so that the loop guard, which names the line, fires first.
_SYNC_GRACE_SECONDS = 1.0


class JSHost(Protocol):
    """The host services one plugin config's JS code reaches (cache, storage, fetch, ...).

    `call` answers a plugin's awaited request (op names: see prelude.js); raising a `JSError`
    rejects the plugin's promise with that error, any other exception with a plain Error.
    `notify` receives fire-and-forget messages: `metric` and `unhandledRejection`."""

    async def call(self, op: str, args: list[Any]) -> Any: ...

    def notify(self, op: str, args: list[Any]) -> None: ...


class PluginLoadError(Exception):
    """Creating the VM failed; `error` is what to record on the plugin config."""

    def __init__(self, error: JSError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class Attachment:
    content_type: str
    file_name: str
    contents: bytes


@dataclass(slots=True)
class VMSpec:
    """What a VM is created from."""

    source: str
    config: dict[str, Any]
    attachments: dict[str, Attachment] = field(default_factory=dict)
    task_timeout: float = 30.0
    memory_limit_mb: int = 128
    expose_test_timer: bool = False  # `__jestSetTimeout`, as the original offers under tests


@dataclass(slots=True)
class Exports:
    """What the plugin exports, after the lookup of §3.1."""

    methods: tuple[str, ...]
    schedule: tuple[str, ...]
    jobs: tuple[str, ...]
    metrics: dict[str, str]


class CallFailed(Exception):
    """A plugin call threw, rejected, or timed out.

    `input` is the event as the plugin left it (JS mutates in place; spec §3.2)."""

    def __init__(self, error: JSError, input: Any = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.input = input


class VMBroken(Exception):
    """The VM can no longer run (it ran out of memory); it must be created anew."""


class JSPluginVM:
    """One isolate per plugin config. Create with `await JSPluginVM.create(...)`."""

    def __init__(self, spec: VMSpec, host: JSHost) -> None:
        self.spec = spec
        self._host = host
        self._isolate: Isolate | None = None
        self._ids = itertools.count(1)
        self._outgoing: list[dict[str, Any]] = []
        self._results: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._host_tasks: set[asyncio.Task[None]] = set()
        self.exports = Exports((), (), (), {})
        self.broken: str | None = None

    # -- creation
    @classmethod
    async def create(cls, spec: VMSpec, host: JSHost, transpiler: Transpiler) -> JSPluginVM:
        """Transform, evaluate and inspect the plugin. Does not call setupPlugin."""
        try:
            code = await transpiler.transform(spec.source, spec.task_timeout)
        except TranspileError as exc:
            raise PluginLoadError(JSError(exc.name, exc.message)) from exc
        vm = cls(spec, host)
        try:
            await vm._start(code)
        except BaseException:
            await vm.close()
            raise
        return vm

    async def _start(self, code: str) -> None:
        spec = self.spec
        boot = {
            "config": spec.config,
            "attachments": {
                key: {
                    "content_type": a.content_type,
                    "file_name": a.file_name,
                    "contents": base64.b64encode(a.contents).decode(),
                }
                for key, a in spec.attachments.items()
            },
            "timeout": spec.task_timeout,
            "testing": spec.expose_test_timer,
            "seed": base64.b64encode(os.urandom(32)).decode(),  # crypto.randomBytes' key
        }
        self._isolate = await Isolate.start(
            spec.memory_limit_mb * 1024 * 1024, self._ring, boot, libraries_for(code)
        )
        self._pump_task = asyncio.create_task(self._pump(), name="js-plugin-vm")
        try:
            await self._isolate.evaluate(code, spec.task_timeout + 0.001)
        except IsolateTimeout as exc:
            seconds = format_seconds(spec.task_timeout)
            unit = "second" if spec.task_timeout == 1 else "seconds"
            raise PluginLoadError(
                JSError("Error", f"Script execution timed out after {seconds} {unit}")
            ) from exc
        except IsolateOutOfMemory as exc:
            raise PluginLoadError(JSError("Error", self._memory_message())) from exc
        except JSError as exc:
            raise PluginLoadError(exc) from exc
        try:
            found = await self._request({"t": "setup"}, None)
        except CallFailed as exc:
            raise PluginLoadError(exc.error) from exc
        self.exports = Exports(
            methods=tuple(found["methods"]),
            schedule=tuple(found["schedule"]),
            jobs=tuple(found["jobs"]),
            metrics=dict(found["metrics"]),
        )

    # -- calls
    def has_method(self, name: str) -> bool:
        return name in self.exports.methods

    async def call_method(self, name: str, *args: Any) -> Any:
        """Call one of the six methods with meta appended, limited to TASK_TIMEOUT (spec §5.3)."""
        # The guard runs in JS; this host-side limit only catches a VM that cannot answer at all.
        return await self._request(
            {"t": "call", "kind": "method", "name": name, "args": list(args)},
            self.spec.task_timeout + _SYNC_GRACE_SECONDS,
            caller=name,
        )

    async def run_task(self, name: str) -> Any:
        """A scheduled task (`runEvery*`): only its inner awaits are time-limited, as in the original."""
        return await self._request({"t": "call", "kind": "schedule", "name": name}, None)

    async def run_job(self, name: str, payload: Any) -> Any:
        return await self._request({"t": "call", "kind": "job", "name": name, "payload": payload}, None)

    async def _request(self, message: dict[str, Any], limit: float | None, caller: str | None = None) -> Any:
        if self.broken is not None:
            raise VMBroken(self.broken)
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._results[call_id] = future
        self._send({**message, "id": call_id})
        try:
            if limit is None:
                answer = await future
            else:
                async with asyncio.timeout(limit):
                    answer = await future
        except TimeoutError:
            # The JS keeps running (as in the original); its late answer is dropped.
            limit = self.spec.task_timeout
            seconds = format_seconds(limit)
            unit = "second" if limit == 1 else "seconds"
            error = JSError(
                "TimeoutError",
                f"Script execution timed out after promise waited for {seconds} {unit}",
                caller=caller,
            )
            raise CallFailed(error) from None
        finally:
            self._results.pop(call_id, None)
        if answer.get("ok"):
            return answer.get("value")
        if "broken" in answer:
            raise VMBroken(answer["broken"])
        raise CallFailed(JSError.from_data(answer["error"]), answer.get("input"))

    # -- the exchange with the isolate
    def _ring(self) -> None:
        self._wake.set()

    def _send(self, message: dict[str, Any]) -> None:
        self._outgoing.append(message)
        self._wake.set()

    async def _pump(self) -> None:
        deadline = self.spec.task_timeout + _SYNC_GRACE_SECONDS
        while True:
            await self._wake.wait()
            self._wake.clear()
            isolate = self._isolate
            if isolate is None or isolate.closed:
                return
            batch, self._outgoing = self._outgoing, []
            try:
                incoming = await isolate.exchange(batch, deadline)
            except IsolateTimeout:
                self._fail_running(self._stalled_message())
                continue
            except IsolateOutOfMemory:
                self._break(self._memory_message())
                return
            except JSError as exc:  # the prelude itself failed: nothing sensible can follow
                self._break(f"{exc.name}: {exc.message}")
                return
            for message in incoming:
                self._receive(message)

    def _receive(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "result":
            future = self._results.get(message["id"])
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == "rpc":
            task = asyncio.create_task(self._answer(message["id"], message["op"], message["args"]))
            self._host_tasks.add(task)
            task.add_done_callback(self._host_tasks.discard)
        elif kind == "note":
            try:
                self._host.notify(message["op"], message["args"])
            except Exception:
                log.exception("js_plugin_notify_failed", op=message.get("op"))

    async def _answer(self, rpc_id: int, op: str, args: list[Any]) -> None:
        try:
            value = await self._host.call(op, args)
            reply: dict[str, Any] = {"t": "reply", "id": rpc_id, "ok": True, "value": value}
        except JSError as exc:
            reply = {
                "t": "reply",
                "id": rpc_id,
                "ok": False,
                "error": {"name": exc.name, "message": exc.message, "props": exc.props},
            }
        except Exception as exc:
            reply = {"t": "reply", "id": rpc_id, "ok": False, "error": {"name": "Error", "message": str(exc)}}
        self._send(reply)

    def _stalled_message(self) -> str:
        seconds = format_seconds(self.spec.task_timeout)
        unit = "second" if self.spec.task_timeout == 1 else "seconds"
        return f"Script execution timed out after running for {seconds} {unit} without yielding"

    def _memory_message(self) -> str:
        return f"Plugin exceeded its memory limit of {self.spec.memory_limit_mb} MB"

    def _fail_running(self, message: str) -> None:
        """JS was terminated mid-run: whatever was in flight will never answer."""
        for future in self._results.values():
            if not future.done():
                future.set_result({"ok": False, "error": {"name": "Error", "message": message}})

    def _break(self, reason: str) -> None:
        self.broken = reason
        for future in self._results.values():
            if not future.done():
                future.set_result({"ok": False, "broken": reason})
        if self._isolate is not None:
            self._isolate.close()

    def memory_used(self) -> int:
        """Bytes of V8 heap in use (for benchmarks and monitoring)."""
        if self._isolate is None or self._isolate.closed:
            return 0
        return int(self._isolate.heap_stats().get("used_heap_size", 0))

    async def close(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
        for task in list(self._host_tasks):
            task.cancel()
        if self._isolate is not None:
            self._isolate.close()
        self._fail_running("Plugin VM closed")
