"""A pool of sub-interpreter sandboxes that run Python plugin code.

Each sandbox is a sub-interpreter with its own GIL, driven by a dedicated host thread that blocks
in `Interpreter.exec` for the sandbox's whole life; inside, the sandbox runs its own event loop
(sandbox/guest.py). Host and sandbox talk over a socket pair in length-prefixed JSON frames, so
no side ever polls. Any sandbox can run any plugin config: a config's module is loaded into a
sandbox the first time that sandbox is asked to run it.
"""

# CPython 3.13.0 crashes when a sub-interpreter imports these before the main interpreter has:
# import them here, before the first sub-interpreter is created.
import datetime  # noqa: F401, I001
import decimal  # noqa: F401
import zoneinfo  # noqa: F401

import asyncio
import contextlib
import itertools
import json
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from backports import interpreters

from plugin_server.ingestion.js import encode_js_float, js_float
from plugin_server.plugins.host_services import HostServices, PluginContext
from sandbox import protocol

log = structlog.get_logger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIN_CHUNK = 32  # events per hand-over below which a batch is not split across sandboxes
# The host side encodes call batches and decodes answers with msgspec (several times faster than
# the json module, which the sandboxes use); frames carrying bytes use the protocol's own marker.
_fast_encoder = msgspec.json.Encoder(enc_hook=encode_js_float)
_fast_decoder = msgspec.json.Decoder(float_hook=js_float)  # what plugins return, read as JS would
_BYTES_MARKER = b'"$bytes"'


def _decode_frame(body: bytes) -> Any:
    if _BYTES_MARKER in body:
        return protocol.decode(body)
    return _fast_decoder.decode(body)


class SandboxError(Exception):
    """The sandbox itself failed (crashed, stopped responding, or was closed)."""


@dataclass(slots=True)
class CallOutcome:
    ok: bool
    value: Any = None
    error: dict[str, Any] | None = None
    mutated_input: Any = None

    @classmethod
    def failure(cls, name: str, message: str) -> "CallOutcome":
        return cls(False, None, {"name": name, "message": message, "stack": "", "retry": False})


@dataclass(slots=True)
class RegisteredPlugin:
    spec: dict[str, Any]
    source: str
    context: PluginContext


_THREAD_PREFIX = "sandbox-"


def sandbox_threads_alive() -> bool:
    """Whether any sandbox's thread still runs (after shutdown: one abandoned inside C code)."""
    return any(t.name.startswith(_THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())


class Sandbox:
    """The host side of one sub-interpreter."""

    def __init__(self, number: int, pool: "SandboxPool") -> None:
        self.number = number
        self.pool = pool
        self.pending: dict[int, asyncio.Future[list[Any]]] = {}
        self.loaded: set[str] = set()
        self.last_frame = time.monotonic()
        self.alive = False
        self.being_replaced = False
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._interp: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.exited = threading.Event()

    @property
    def outstanding(self) -> int:
        return len(self.pending)

    async def start(self) -> None:
        host_sock, guest_sock = socket.socketpair()
        try:
            self._interp = interpreters.create()
            fd = guest_sock.detach()
        except BaseException:
            host_sock.close()
            guest_sock.close()
            raise
        try:
            inode = os.fstat(fd).st_ino
            options = json.dumps(
                {"memory_limit_mb": self.pool.memory_limit_mb, "tasks_per_worker": self.pool.tasks_per_worker}
            )
            bootstrap = (
                f"import sys\nsys.path.insert(0, {PROJECT_ROOT!r})\n"
                f"from sandbox.guest import main\nmain({fd}, {options!r})\n"
            )
            self._thread = threading.Thread(
                target=self._run_interpreter,
                args=(bootstrap, fd, inode),
                name=f"{_THREAD_PREFIX}{self.number}",
                daemon=True,
            )
            self._thread.start()
        except BaseException:
            # nothing runs in the interpreter yet: release it and both ends here
            host_sock.close()
            os.close(fd)
            self._close_interpreter()
            self.exited.set()
            raise
        try:
            reader, self._writer = await asyncio.open_connection(sock=host_sock)
        except BaseException:
            # the guest is running: closing the host end makes its channel read end, and it exits
            host_sock.close()
            raise
        self.alive = True
        self.last_frame = time.monotonic()
        self._reader_task = asyncio.create_task(self._read(reader))

    def _run_interpreter(self, bootstrap: str, fd: int, inode: int) -> None:
        try:
            self._interp.exec(bootstrap)
        except Exception as exc:
            log.error("sandbox exited with an error", sandbox=self.number, error=str(exc)[-2000:])
            # Close the guest's end unless the guest closed it already: by now its number may
            # belong to another sandbox's socket, which must not be closed from here.
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == inode:
                    os.close(fd)
        finally:
            self._close_interpreter()
            self.exited.set()

    def _close_interpreter(self) -> None:
        try:
            self._interp.close()
        except Exception as exc:  # still running elsewhere, or already gone
            log.warning("sandbox interpreter not closed", sandbox=self.number, error=str(exc))

    def send(self, message: list[Any]) -> None:
        if not self.alive or self._writer is None:
            raise SandboxError("sandbox is closed")
        if message[0] == "call":
            body = _fast_encoder.encode(message)
            self._writer.write(protocol.HEADER.pack(len(body)) + body)
        else:
            self._writer.write(protocol.encode(message))

    async def request(self, message: list[Any]) -> list[Any]:
        req_id = next(self._ids)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.pending[req_id] = future
        self.pool.request_started()
        try:
            self.send([message[0], req_id, *message[1:]])
            return await future
        finally:
            self.pending.pop(req_id, None)
            self.pool.request_finished()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(protocol.HEADER.size)
                (length,) = protocol.HEADER.unpack(header)
                message = _decode_frame(await reader.readexactly(length))
                self.last_frame = time.monotonic()
                self._on_message(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("sandbox channel failed", sandbox=self.number)
        self._fail_all("The plugin sandbox stopped unexpectedly")
        self.pool.on_sandbox_lost(self)

    def _on_message(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == "result":
            future = self.pending.get(message[1])
            if future is not None and not future.done():
                future.set_result(message[2])
        elif kind == "rpc":
            _, rpc_id, key, name, args = message
            self._spawn(self._serve(rpc_id, key, name, args))
        elif kind == "notify":
            _, key, name, args = message
            self._spawn(self._serve(None, key, name, args))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, rpc_id: int | None, key: str, name: str, args: list[Any]) -> None:
        plugin = self.pool.plugins.get(key)
        try:
            if plugin is None or key not in self.loaded:
                # only configs this sandbox runs may ask anything of the host
                raise SandboxError(f"unknown plugin config {key}")
            value = await self.pool.services.call(plugin.context, name, args)
            reply = ["reply", rpc_id, True, value]
        except Exception as exc:
            if rpc_id is None:
                log.warning("plugin notification failed", service=name, key=key, error=str(exc))
                return
            reply = ["reply", rpc_id, False, {"name": type(exc).__name__, "message": str(exc)}]
        if rpc_id is not None and self.alive:
            try:
                self.send(reply)
            except (ValueError, TypeError) as exc:  # the value is not JSON
                self.send(["reply", rpc_id, False, {"name": "TypeError", "message": str(exc)}])

    def _fail_all(self, message: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(SandboxError(message))

    def abandon(self, reason: str) -> None:
        """Stop using this sandbox; its thread closes the interpreter whenever plugin code returns."""
        if not self.alive:
            return
        self.alive = False
        self._fail_all(reason)
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
        self.pool.on_sandbox_lost(self)

    async def close(self, time_limit: float = 5.0) -> None:
        if self.alive:
            try:
                self.send(["close"])
                assert self._writer is not None
                await self._writer.drain()
            except (SandboxError, ConnectionError):
                pass
        self.abandon("The plugin sandbox was closed")
        await asyncio.to_thread(self.exited.wait, time_limit)


class SandboxPool:
    """N sandboxes; hands each batch of calls to the least busy ones."""

    def __init__(
        self,
        size: int,
        services: HostServices,
        *,
        tasks_per_worker: int = 10,
        memory_limit_mb: int = 512,
        stuck_after: float = 35.0,
    ) -> None:
        self.size = max(1, size)
        self.services = services
        self.tasks_per_worker = tasks_per_worker
        self.memory_limit_mb = memory_limit_mb
        self.stuck_after = stuck_after
        self.sandboxes: list[Sandbox] = []
        self.plugins: dict[str, RegisteredPlugin] = {}
        self.replaced = 0
        self._numbers = itertools.count(1)
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False
        self._replacing: set[asyncio.Task[Any]] = set()
        self._replaced_event = asyncio.Event()
        # requests handed to sandboxes and not answered yet (back-pressure, services §1.6.1)
        self.in_flight = 0
        self.drained = asyncio.Event()
        self.drained.set()

    def request_started(self) -> None:
        self.in_flight += 1
        self.drained.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.drained.set()

    def full(self) -> bool:
        """The original's "workers full" test: more than W x W tasks queued."""
        return self.in_flight > self.size * self.size

    async def start(self) -> None:
        for _ in range(self.size):
            sandbox = Sandbox(next(self._numbers), self)
            await sandbox.start()
            self.sandboxes.append(sandbox)
        self._monitor = asyncio.create_task(self._watch_stuck())

    async def stop(self) -> None:
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
        await asyncio.gather(*(s.close() for s in self.sandboxes), return_exceptions=True)
        self.sandboxes.clear()

    # ------------------------------------------------------------------ plugins
    def register(self, key: str, spec: dict[str, Any], source: str, context: PluginContext) -> None:
        self.plugins[key] = RegisteredPlugin(spec, source, context)

    async def load(self, key: str) -> CallOutcome:
        """Load `key` into one sandbox now (module body + setup_plugin); the others load lazily."""
        sandbox = await self._pick()
        sandbox.loaded.add(key)
        plugin = self.plugins[key]
        try:
            results = await sandbox.request(["load", key, plugin.spec, plugin.source])
        except SandboxError as exc:
            sandbox.loaded.discard(key)
            return CallOutcome.failure(
                "TimeoutError" if "responding" in str(exc) else "SandboxError", str(exc)
            )
        outcome = CallOutcome(*results[0])
        if not outcome.ok:
            sandbox.loaded.discard(key)
        return outcome

    def loaded_in(self, key: str) -> list[Sandbox]:
        return [s for s in self.sandboxes if key in s.loaded and s.alive]

    async def unload(self, key: str) -> None:
        for sandbox in self.sandboxes:
            if key in sandbox.loaded:
                sandbox.loaded.discard(key)
                if sandbox.alive:
                    sandbox.send(["unload", key])
        self.plugins.pop(key, None)

    async def call(
        self,
        key: str,
        method: str,
        batch: Sequence[list[Any]],
        time_limit: float,
        *,
        sandbox: Sandbox | None = None,
    ) -> list[CallOutcome]:
        """Run `method` of plugin config `key` once per args list; one outcome per entry, in order."""
        if not batch:
            return []
        if sandbox is not None:
            return await self._call_in(sandbox, key, method, list(batch), time_limit)
        parts = min(len(self.sandboxes), max(1, math.ceil(len(batch) / MIN_CHUNK)))
        if parts <= 1:
            return await self._call_in(await self._pick(key), key, method, list(batch), time_limit)
        size = math.ceil(len(batch) / parts)
        chunks = [list(batch[i : i + size]) for i in range(0, len(batch), size)]
        await self._pick(key)
        targets = sorted(self.sandboxes, key=lambda s: (not s.alive, s.outstanding))[: len(chunks)]
        results = await asyncio.gather(
            *(self._call_in(t, key, method, c, time_limit) for t, c in zip(targets, chunks, strict=True))
        )
        return [outcome for part in results for outcome in part]

    async def _call_in(
        self, sandbox: Sandbox, key: str, method: str, batch: list[list[Any]], time_limit: float
    ) -> list[CallOutcome]:
        plugin = self.plugins.get(key)
        if plugin is None:
            return [CallOutcome.failure("LookupError", f"Plugin config {key} is not registered")] * len(batch)
        try:
            if key not in sandbox.loaded:
                sandbox.loaded.add(key)
                # pipelined: the sandbox runs the load before any call for the same key
                sandbox.send(["load", -1, key, plugin.spec, plugin.source])
            results = await sandbox.request(["call", key, method, batch, time_limit])
        except SandboxError as exc:
            name = "TimeoutError" if "responding" in str(exc) else "SandboxError"
            return [CallOutcome.failure(name, str(exc)) for _ in batch]
        return [CallOutcome(*r) for r in results]

    async def _pick(self, key: str | None = None, wait: float = 10.0) -> Sandbox:
        """The least busy live sandbox, waiting for a replacement when none is alive."""
        if not any(s.alive for s in self.sandboxes) and not self._closing:
            self._replaced_event.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._replaced_event.wait()
            except TimeoutError:
                pass
        return self._least_busy(key)

    def _least_busy(self, key: str | None = None) -> Sandbox:
        alive = [s for s in self.sandboxes if s.alive] or self.sandboxes
        # prefer a sandbox that already has the module when loads are equal
        return min(alive, key=lambda s: (s.outstanding, key is not None and key not in s.loaded))

    # ------------------------------------------------------------------ health
    async def _watch_stuck(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.stuck_after / 4))
            now = time.monotonic()
            for sandbox in list(self.sandboxes):
                if sandbox.alive and sandbox.outstanding and now - sandbox.last_frame > self.stuck_after:
                    log.error("plugin sandbox stopped responding; replacing it", sandbox=sandbox.number)
                    sandbox.abandon(
                        f"Script execution timed out: the plugin sandbox stopped responding for "
                        f"{self.stuck_after:g} seconds and was replaced"
                    )

    def on_sandbox_lost(self, sandbox: Sandbox) -> None:
        sandbox.alive = False
        if self._closing or sandbox not in self.sandboxes or sandbox.being_replaced:
            return
        sandbox.being_replaced = True
        task = asyncio.create_task(self._replace(sandbox))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self, old: Sandbox) -> None:
        delay = 0.5
        while True:
            fresh = Sandbox(next(self._numbers), self)
            try:
                await fresh.start()
                break
            except Exception as exc:  # never leave the pool a sandbox short for good
                log.error("plugin sandbox could not be started; retrying", error=repr(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                if self._closing:
                    return
        if self._closing:
            await fresh.close()
            return
        self.sandboxes[self.sandboxes.index(old)] = fresh
        self.replaced += 1
        self._replaced_event.set()
        log.warning("plugin sandbox replaced", old=old.number, new=fresh.number)
