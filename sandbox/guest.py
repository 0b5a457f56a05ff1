"""The loop inside one sub-interpreter: receives loads and call batches, runs plugin code, and
forwards plugin I/O to the host as requests. Started by `main(fd, options_json)`."""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import inspect
import json
import os
import socket
import time
import traceback
from typing import Any

from sandbox import guard, meta, protocol
from sandbox.plugin_module import PluginModule, collect_exports, compile_plugin
from sandbox.watchdog import Watchdog, plural_seconds

BEAT_SECONDS = 0.5
MAX_STOPPED_IN_A_ROW = 3
_SANDBOX_DIR = os.path.dirname(os.path.abspath(__file__))
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__))


class HostError(Exception):
    """An error a host service returned; `name` is the host-side exception class name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


_current_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_key", default=None)


class LoadedPlugin:
    def __init__(self, key: str, module: PluginModule, plugin_meta: meta.Meta) -> None:
        self.key = key
        self.module = module
        self.meta = plugin_meta


class Guest:
    def __init__(self, sock: socket.socket, options: dict[str, Any]) -> None:
        self.options = options
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.sock = sock
        self.sock.setblocking(False)
        limit = int(options.get("memory_limit_mb", 512)) * 1024 * 1024
        self.watchdog = Watchdog(limit, [_SANDBOX_DIR, _ASYNCIO_DIR])
        self.semaphore = asyncio.Semaphore(int(options.get("tasks_per_worker", 10)))
        self.plugins: dict[str, asyncio.Future[LoadedPlugin]] = {}
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_rpc = 0
        self.busy = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.readable_roots = guard.stdlib_roots()
        self.writer: asyncio.StreamWriter | None = None
        self.beat_handle: asyncio.TimerHandle | None = None
        self._install_sdk()

    # ---------------------------------------------------------------- plumbing
    def run(self) -> None:
        try:
            self.loop.run_until_complete(self.serve())
        finally:
            self.watchdog.stop()
            self.loop.close()

    async def serve(self) -> None:
        reader, self.writer = await asyncio.open_connection(sock=self.sock)
        guard.install(self.readable_roots, own_sockets=(self.sock,))
        guard.disarm_process_functions()
        try:
            while True:
                header = await reader.readexactly(protocol.HEADER.size)
                (length,) = protocol.HEADER.unpack(header)
                message = protocol.decode(await reader.readexactly(length))
                if message[0] == "close":
                    break
                self.dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        for task in list(self.tasks):
            task.cancel()
        self.writer.close()

    def send(self, message: list[Any]) -> None:
        assert self.writer is not None
        if not self.writer.is_closing():
            self.writer.write(protocol.encode(message))

    def dispatch(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == "reply":
            _, rpc_id, ok, value = message
            future = self.pending.pop(rpc_id, None)
            if future is not None and not future.done():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(_host_exception(value))
        elif kind == "load":
            self.spawn(self.load(*message[1:]))
        elif kind == "call":
            self.spawn(self.call(*message[1:]))
        elif kind == "unload":
            self.plugins.pop(message[1], None)

    def spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        self.busy += 1
        self._schedule_beat()

        def finished(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            self.busy -= 1

        task.add_done_callback(finished)

    def _schedule_beat(self) -> None:
        if self.beat_handle is None:
            self.beat_handle = self.loop.call_later(BEAT_SECONDS, self._beat)

    def _beat(self) -> None:
        self.beat_handle = None
        if self.busy:
            self.send(["beat"])
            self._schedule_beat()

    def request(self, key: str, name: str, args: list[Any]) -> asyncio.Future[Any]:
        self.next_rpc += 1
        future: asyncio.Future[Any] = self.loop.create_future()
        self.pending[self.next_rpc] = future
        self.send(["rpc", self.next_rpc, key, name, args])
        return future

    def notify(self, key: str, name: str, args: list[Any]) -> None:
        self.send(["notify", key, name, args])

    def _install_sdk(self) -> None:
        # The same module plugin authors type-check against; here `console` writes to the log
        # of the plugin config whose code is running.
        import posthog_plugin

        posthog_plugin.console = meta.Console(self._notify_current)

    def _notify_current(self, name: str, args: list[Any]) -> None:
        key = _current_key.get()
        if key is not None:
            self.notify(key, name, args)

    def _print(self, *args: Any, sep: str | None = " ", end: str | None = "\n", **_: Any) -> None:
        self._notify_current("console", ["LOG", (sep if sep is not None else " ").join(str(a) for a in args)])

    # ---------------------------------------------------------------- loading
    async def load(self, req_id: int, key: str, spec: dict[str, Any], source: str) -> None:
        future: asyncio.Future[LoadedPlugin] = self.loop.create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        self.plugins[key] = future
        token = _current_key.set(key)
        try:
            plugin_dir = spec.get("plugin_dir")
            if plugin_dir:
                self.readable_roots.append(plugin_dir)  # the host sends it as an absolute real path
            time_limit = float(spec.get("timeout", 30))
            builtins_ns = guard.guarded_builtins(self._print)
            filename = spec.get("filename") or f"<plugin {spec['plugin_config_id']}>"
            record, wd_token = self.watchdog.begin(time_limit)
            try:
                namespace = compile_plugin(source, filename, builtins_ns, f"plugin_{key.replace(':', '_')}")
            finally:
                self.watchdog.end(record, wd_token)
            module = collect_exports(namespace)
            plugin_meta = meta.Meta(
                spec,
                module.metrics,
                lambda name, args: self.request(key, name, args),
                lambda name, args: self.notify(key, name, args),
            )
            loaded = LoadedPlugin(key, module, plugin_meta)
            setup = module.functions.get("setup_plugin")
            if setup is not None:
                await self.invoke(setup, [plugin_meta], time_limit)
            future.set_result(loaded)
            self.send(["result", req_id, [[True, module.exports(), None, None]]])
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            self.send(["result", req_id, [[False, None, _error(exc), None]]])
            if _cancelled_here(exc):
                raise
        finally:
            _current_key.reset(token)

    # ---------------------------------------------------------------- calls
    async def call(
        self, req_id: int, key: str, method: str, batch: list[list[Any]], time_limit: float
    ) -> None:
        token = _current_key.set(key)
        try:
            future = self.plugins.get(key)
            if future is None:
                raise LookupError(f"Plugin config {key} is not loaded in this sandbox")
            loaded = await future
            fn = _lookup(loaded, method)
        except BaseException as exc:
            error = _error(exc)
            self.send(["result", req_id, [[False, None, error, None] for _ in batch]])
            _current_key.reset(token)
            return
        try:
            results: list[list[Any]] = []
            if inspect.iscoroutinefunction(fn):
                tasks = [
                    self.loop.create_task(self.invoke_one(fn, args, loaded, method, time_limit))
                    for args in batch
                ]
                results = list(await asyncio.gather(*tasks))
            else:
                # A plugin that hits its deadline on several events in a row would hold the whole
                # batch for that many TASK_TIMEOUTs: after a few, the rest of the batch is skipped.
                stopped_in_a_row = 0
                skipped: dict[str, Any] = {}
                for args in batch:
                    if stopped_in_a_row >= MAX_STOPPED_IN_A_ROW:
                        results.append([False, None, skipped, None])
                        continue
                    outcome = self.invoke_sync(fn, args, loaded, method, time_limit)
                    if outcome is None:  # the function returned an awaitable: run it the async way
                        outcome = await self.invoke_one(fn, args, loaded, method, time_limit)
                    if not outcome[0] and outcome[2]["name"] in ("TimeoutError", "MemoryError"):
                        stopped_in_a_row += 1
                        skipped = dict(outcome[2])
                        skipped["message"] += " (skipped: the previous calls in this batch were stopped)"
                    else:
                        stopped_in_a_row = 0
                    results.append(outcome)
            self.send_results(req_id, method, results)
        finally:
            _current_key.reset(token)

    def send_results(self, req_id: int, method: str, results: list[list[Any]]) -> None:
        """Values are checked by encoding the whole answer once; only when that fails is each
        value checked. A value that cannot be sent (not JSON, nested too deep, too big) fails its
        own call: the others still get their answers."""
        try:
            frame = protocol.encode(["result", req_id, results], strict=True)
        except Exception:
            for outcome in results:
                if outcome[0]:
                    try:
                        protocol.encode(outcome[1], strict=True)
                    except Exception as exc:
                        if method == "process_event":
                            error = TypeError(f"process_event must return JSON-compatible data: {exc}")
                            outcome[:] = [False, None, _error(error), None]
                        else:
                            outcome[1] = _safe_repr(outcome[1])
                if outcome[3] is not None:
                    outcome[3] = _json_or_none(outcome[3])
            try:
                frame = protocol.encode(["result", req_id, results])
            except Exception as exc:
                failed = _error(TypeError(f"the result could not be sent to the host: {exc}"))
                frame = protocol.encode(["result", req_id, [[False, None, failed, None] for _ in results]])
        assert self.writer is not None
        if not self.writer.is_closing():
            self.writer.write(frame)

    def invoke_sync(
        self, fn: Any, args: list[Any], loaded: LoadedPlugin, method: str, time_limit: float
    ) -> list[Any] | None:
        """One call of a plain function, without a task or a coroutine; None when it returned an
        awaitable (its effects are done; the awaitable is run by invoke_one)."""
        record = self.watchdog.begin_sync(time_limit)
        try:
            result = fn(*args, loaded.meta)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                return None
            self.watchdog.check_memory_after(record)
            return [True, _check_result(method, result), None, None]
        except BaseException as exc:  # SystemExit, KeyboardInterrupt from plugin code too
            stopped = isinstance(exc, TimeoutError | MemoryError)
            mutated = args[0] if method == "process_event" and args and not stopped else None
            return [False, None, _error(exc), mutated]
        finally:
            self.watchdog.end_sync(record)

    async def invoke_one(
        self, fn: Any, args: list[Any], loaded: LoadedPlugin, method: str, time_limit: float
    ) -> list[Any]:
        try:
            result = await self.invoke(fn, [*args, loaded.meta], time_limit)
            return [True, _check_result(method, result), None, None]
        except BaseException as exc:  # SystemExit, KeyboardInterrupt from plugin code too
            if _cancelled_here(exc):
                raise
            # a call stopped by the watchdog keeps nothing of what it did to the event
            stopped = isinstance(exc, TimeoutError | MemoryError)
            mutated = args[0] if method == "process_event" and args and not stopped else None
            return [False, None, _error(exc), mutated]

    async def invoke(self, fn: Any, args: list[Any], time_limit: float) -> Any:
        """Run one plugin function under the concurrency limit, the deadline and the memory ceiling."""
        async with self.semaphore:
            record, token = self.watchdog.begin(time_limit)
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    remaining = max(record.deadline - time.monotonic(), 0.001)
                    try:
                        async with asyncio.timeout(remaining):
                            result = await result
                    except TimeoutError as exc:
                        if str(exc):
                            raise
                        waited = plural_seconds(time_limit)
                        raise TimeoutError(
                            f"Script execution timed out after promise waited for {waited}"
                        ) from None
                self.watchdog.check_memory_after(record)
                return result
            finally:
                self.watchdog.end(record, token)


def _cancelled_here(exc: BaseException) -> bool:
    """A CancelledError that is this task being cancelled (shutdown), not one plugin code raised."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _lookup(loaded: LoadedPlugin, method: str) -> Any:
    if method.startswith("job:"):
        name = method[4:]
        if name not in loaded.module.jobs:
            raise LookupError(f'Job "{name}" not found')
        return loaded.module.jobs[name]
    fn = loaded.module.functions.get(method)
    if fn is None:
        raise LookupError(f'Method "{method}" not found')
    return fn


def _check_result(method: str, result: Any) -> Any:
    if method == "process_event" and result is not None and not isinstance(result, dict):
        raise TypeError(f"process_event must return a dict or None, not {type(result).__name__}")
    return result


def _json_or_none(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except Exception:  # not JSON, or nested too deep
        return None


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:10_000]
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


def _error(exc: BaseException) -> dict[str, Any]:
    try:
        stack = "".join(traceback.format_exception(exc))
    except Exception:
        stack = ""
    return protocol.error_payload(exc, stack)


def _host_exception(error: dict[str, Any]) -> BaseException:
    cls = getattr(builtins, str(error.get("name")), None)
    message = str(error.get("message", ""))
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    name = str(error.get("name") or "HostError")
    if name.isidentifier():
        cls = _host_error_classes.get(name)
        if cls is None:
            # the plugin sees the host's exception class name (e.g. RetryError, ServiceNotFound)
            cls = _host_error_classes[name] = type(name, (HostError,), {})
        return cls(name, message)
    return HostError(name, message)


_host_error_classes: dict[str, type[HostError]] = {
    "RetryError": type("RetryError", (HostError, meta.RetryError), {})
}


def main(fd: int, options_json: str) -> None:
    sock = socket.socket(fileno=fd)
    try:
        Guest(sock, json.loads(options_json)).run()
    finally:
        # Closed here, in this thread, however the guest ended: left to the interpreter's
        # finalisation, the close could come after the host reused the descriptor's number.
        sock.close()
