"""Sub-interpreter sandboxes that run Python plugin code, kept per tenant.

Each sandbox is a sub-interpreter with its own GIL, driven by a dedicated host thread that blocks
in `Interpreter.exec` for the sandbox's whole life; inside, the sandbox runs its own event loop
(sandbox/guest.py). Host and sandbox talk over a socket pair in length-prefixed JSON frames, so
no side ever polls.

A sandbox belongs to one tenant (the organization of the team whose plugin config it runs) and
only ever loads that tenant's configs. Sandboxes are started when a tenant has work, closed when
idle, and at most `max_alive` live at once: at the cap, the least recently used idle sandbox is
closed to make room, and a tenant with no sandbox waits for one. A tenant's work never runs in
another tenant's sandbox. docs/plugin-sandbox.md states what this isolates and what it does not.
"""

# CPython 3.13.0 crashes when a sub-interpreter imports these before the main interpreter has:
# import them here, before the first sub-interpreter is created.
import datetime  # noqa: F401, I001
import decimal  # noqa: F401
import zoneinfo  # noqa: F401

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import marshal
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from backports import interpreters
from prometheus_client import Counter, Gauge

from plugin_server.ingestion.js import encode_js_float, js_float
from plugin_server.metrics import REGISTRY
from plugin_server.plugins.host_services import HostServices, PluginContext
from sandbox import protocol

log = structlog.get_logger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANDBOX_DIR = os.path.join(PROJECT_ROOT, "sandbox")
MIN_CHUNK = 32  # events per hand-over below which a batch is not split across sandboxes
# The host side encodes call batches and decodes answers with msgspec (several times faster than
# the json module, which the sandboxes use); frames carrying bytes use the protocol's own marker.
_fast_encoder = msgspec.json.Encoder(enc_hook=encode_js_float)
_fast_decoder = msgspec.json.Decoder(float_hook=js_float)  # what plugins return, read as JS would
_BYTES_MARKER = b'"$bytes"'

SANDBOXES_ALIVE = Gauge(
    "plugin_server_sandboxes_alive", "Python plugin sandboxes running (or starting)", registry=REGISTRY
)
SANDBOXES_STARTED = Counter(
    "plugin_server_sandboxes_started", "Python plugin sandboxes started", registry=REGISTRY
)
SANDBOXES_CLOSED = Counter(
    "plugin_server_sandboxes_closed",
    "Python plugin sandboxes closed, by reason (idle, lru, lost, shutdown)",
    ["reason"],
    registry=REGISTRY,
)
SANDBOX_REQUESTS_REFUSED = Counter(
    "plugin_server_sandbox_requests_refused",
    "Requests from a sandbox for a plugin config it does not hold (forged: foreign; stale: unloaded)",
    ["reason", "service"],
    registry=REGISTRY,
)


def _decode_frame(body: bytes) -> Any:
    if _BYTES_MARKER in body:
        return protocol.decode(body)
    return _fast_decoder.decode(body)


@functools.cache
def sandbox_bundle() -> bytes:
    """The `sandbox` package compiled once, marshalled for sandbox/bootstrap.py (sent as the
    channel's first frame)."""
    bundle: dict[str, tuple[str, bool, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(SANDBOX_DIR):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for filename in sorted(filenames):
            if not filename.endswith(".py") or filename == "bootstrap.py":
                continue
            path = os.path.join(dirpath, filename)
            parts = os.path.relpath(path, PROJECT_ROOT)[:-3].split(os.sep)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            with open(path, encoding="utf-8") as f:
                bundle[name] = (path, is_package, compile(f.read(), path, "exec", dont_inherit=True))
    return marshal.dumps(bundle)


@functools.cache
def _bootstrap_script() -> str:
    with open(os.path.join(SANDBOX_DIR, "bootstrap.py"), encoding="utf-8") as f:
        return f.read()


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
    tenant: str
    has_teardown: bool = False


_THREAD_PREFIX = "sandbox-"
# Interpreters are created, set up (their runtime imported) and destroyed one at a time: CPython
# 3.13.0 aborted (in unmarshalling, interned strings) when sandboxes imported their modules while
# others were being destroyed. Running sandboxes still run in parallel.
_LIFECYCLE_LOCK = threading.Lock()


def sandbox_threads_alive() -> bool:
    """Whether any sandbox's thread still runs (after shutdown: one abandoned inside C code)."""
    return any(t.name.startswith(_THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())


class Sandbox:
    """The host side of one sub-interpreter, owned by one tenant."""

    def __init__(self, number: int, pool: "SandboxPool", tenant: str = "") -> None:
        self.number = number
        self.pool = pool
        self.tenant = tenant
        self.pending: dict[int, asyncio.Future[list[Any]]] = {}
        # The configs loaded here, as the host sent them: the only keys this sandbox may use.
        self.loaded: set[str] = set()
        self.unloaded: set[str] = set()
        self.last_frame = time.monotonic()
        self.last_used = time.monotonic()
        self.alive = False
        self.leases = 0  # callers using this sandbox now: it is not closed under them
        self.retiring = False
        self.holds_slot = False
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._interp: Any = None
        self._make_interpreter: Callable[[], Any] = interpreters.create
        self._tasks: set[asyncio.Task[Any]] = set()
        self.exited = threading.Event()

    @property
    def outstanding(self) -> int:
        return len(self.pending)

    async def start(self) -> None:
        host_sock, guest_sock = socket.socketpair()
        fd = guest_sock.detach()
        try:
            inode = os.fstat(fd).st_ino
            options = json.dumps(
                {"memory_limit_mb": self.pool.memory_limit_mb, "tasks_per_worker": self.pool.tasks_per_worker}
            )
            # The interpreter is created in the sandbox's own thread: the host's loop does not
            # wait for it, and sandboxes start in parallel.
            self._thread = threading.Thread(
                target=self._run_interpreter,
                args=(fd, inode, options),
                name=f"{_THREAD_PREFIX}{self.number}",
                daemon=True,
            )
            self._thread.start()
        except BaseException:
            host_sock.close()
            os.close(fd)
            self.exited.set()
            raise
        try:
            reader, self._writer = await asyncio.open_connection(sock=host_sock)
            bundle = sandbox_bundle()
            self._writer.write(protocol.HEADER.pack(len(bundle)) + bundle)  # read by the bootstrap
        except BaseException:
            # the guest is running: closing the host end makes its channel read end, and it exits
            host_sock.close()
            raise
        self.alive = True
        self.last_frame = time.monotonic()
        self._reader_task = asyncio.create_task(self._read(reader))

    def _run_interpreter(self, fd: int, inode: int, options: str) -> None:
        try:
            with _LIFECYCLE_LOCK:
                self._interp = self._make_interpreter()
                self._interp.exec(
                    f"CHANNEL_FD = {fd}\nOPTIONS = {options!r}\nPROJECT_ROOT = {PROJECT_ROOT!r}\n"
                    + _bootstrap_script()
                )
            self._interp.exec("main(CHANNEL_FD, OPTIONS)")
        except Exception as exc:
            log.error("sandbox exited with an error", sandbox=self.number, error=str(exc)[-2000:])
            # Close the guest's end unless the guest closed it already: by now its number may
            # belong to another sandbox's socket, which must not be closed from here.
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == inode:
                    os.close(fd)
        finally:
            if self._interp is not None:
                self._close_interpreter()
            self.exited.set()

    def _close_interpreter(self) -> None:
        try:
            with _LIFECYCLE_LOCK:
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
        return await self._exchange(lambda req_id: self.send([message[0], req_id, *message[1:]]))

    async def request_load(self, key: str, plugin: RegisteredPlugin) -> list[Any]:
        return await self._exchange(lambda req_id: self.load_into(key, plugin, req_id))

    async def _exchange(self, send: Callable[[int], None]) -> list[Any]:
        req_id = next(self._ids)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.pending[req_id] = future
        self.pool.request_started()
        try:
            send(req_id)
            return await future
        finally:
            self.pending.pop(req_id, None)
            self.pool.request_finished()

    def load_into(self, key: str, plugin: RegisteredPlugin, req_id: int = -1) -> None:
        """Send `key`'s module to this sandbox (pipelined: it runs before later calls for `key`)."""
        if plugin.tenant != self.tenant:  # never load one tenant's config into another's sandbox
            raise SandboxError(f"plugin config {key} does not belong to this sandbox's organization")
        self.loaded.add(key)
        self.unloaded.discard(key)
        self.send(["load", req_id, key, plugin.spec, plugin.source])

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
            # what a sandbox sends is untrusted: a frame that makes no sense ends that sandbox
            log.exception("sandbox channel failed", sandbox=self.number, tenant=self.tenant)
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

    def _verified(self, key: Any, name: Any, args: Any) -> RegisteredPlugin:
        """The plugin config a request may act for: one the host loaded into THIS sandbox, of
        this sandbox's tenant. Nothing the sandbox says about itself is trusted."""
        plugin = self.pool.plugins.get(key) if isinstance(key, str) else None
        if (
            plugin is not None
            and key in self.loaded
            and plugin.tenant == self.tenant
            and isinstance(name, str)
            and isinstance(args, list)
        ):
            return plugin
        service = name if isinstance(name, str) and self.pool.services.has(name) else "other"
        claimed = repr(key)[:200]
        if isinstance(key, str) and key in self.unloaded:
            # a request of a config unloaded a moment ago (a fire-and-forget call still in flight)
            SANDBOX_REQUESTS_REFUSED.labels("unloaded", service).inc()
            log.info("request of an unloaded plugin config refused", sandbox=self.number, claimed=claimed)
        else:
            SANDBOX_REQUESTS_REFUSED.labels("foreign", service).inc()
            log.warning(
                "security: sandbox request for a plugin config it does not hold refused",
                security_event=True,
                sandbox=self.number,
                tenant=self.tenant,
                claimed_config=claimed,
                claimed_organization=plugin.tenant if plugin is not None else None,
                service=str(name)[:100],
            )
        raise PermissionError("This plugin config may not make requests from this sandbox")

    async def _serve(self, rpc_id: Any, key: Any, name: Any, args: Any) -> None:
        try:
            plugin = self._verified(key, name, args)
            value = await self.pool.services.call(plugin.context, name, args)
            reply = ["reply", rpc_id, True, value]
        except Exception as exc:
            if rpc_id is None:
                if not isinstance(exc, PermissionError):
                    log.warning("plugin notification failed", service=str(name)[:100], error=str(exc))
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
    """Sandboxes per tenant, started on demand, closed when idle (`idle_seconds`, 0 = only to make
    room at the cap), at most `max_alive` at once.

    `size` (WORKER_CONCURRENCY) is the most sandboxes one tenant uses at once: a batch of more
    than MIN_CHUNK events is split over up to that many of the tenant's sandboxes; the first one
    is waited for, more are started only while the cap leaves room. `tasks_per_worker` is the
    async invocations one sandbox runs at once.
    """

    def __init__(
        self,
        size: int,
        services: HostServices,
        *,
        tasks_per_worker: int = 10,
        memory_limit_mb: int = 512,
        stuck_after: float = 35.0,
        max_alive: int = 100,
        idle_seconds: float = 0.0,
    ) -> None:
        self.size = max(1, size)
        self.services = services
        self.tasks_per_worker = tasks_per_worker
        self.memory_limit_mb = memory_limit_mb
        self.stuck_after = stuck_after
        self.max_alive = max(1, max_alive)
        self.idle_seconds = idle_seconds
        self.tenants: dict[str, list[Sandbox]] = {}
        self.plugins: dict[str, RegisteredPlugin] = {}
        self.replaced = 0  # sandboxes lost (crashed or stuck) while in use
        self.started = 0
        self.slots_used = 0  # live sandboxes, including starting and closing ones
        self.peak_alive = 0
        self._numbers = itertools.count(1)
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False
        self._retiring: set[asyncio.Task[Any]] = set()
        self._growing: dict[str, asyncio.Lock] = {}  # one per tenant seen (kept: a few hundred bytes)
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # requests handed to sandboxes and not answered yet (back-pressure, services §1.6.1)
        self.in_flight = 0
        self.drained = asyncio.Event()
        self.drained.set()

    @property
    def sandboxes(self) -> list[Sandbox]:
        """Every live sandbox, of all tenants."""
        return [s for group in self.tenants.values() for s in group]

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
        self._monitor = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_result(None)
        for sandbox in self.sandboxes:
            self._retire(sandbox, "shutdown", teardown=False)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # ------------------------------------------------------------------ plugins
    def register(
        self, key: str, spec: dict[str, Any], source: str, context: PluginContext, tenant: str = ""
    ) -> None:
        self.plugins[key] = RegisteredPlugin(spec, source, context, tenant)

    async def load(self, key: str) -> CallOutcome:
        """Load `key` into one of its tenant's sandboxes now (module body + setup_plugin); the
        tenant's other sandboxes load it when first handed work for it."""
        plugin = self.plugins[key]
        try:
            [sandbox] = await self._lease(plugin.tenant)
        except SandboxError as exc:
            return CallOutcome.failure("SandboxError", str(exc))
        try:
            results = await sandbox.request_load(key, plugin)
        except SandboxError as exc:
            sandbox.loaded.discard(key)
            return CallOutcome.failure(
                "TimeoutError" if "responding" in str(exc) else "SandboxError", str(exc)
            )
        finally:
            self._release([sandbox])
        outcome = CallOutcome(*results[0])
        if not outcome.ok:
            sandbox.loaded.discard(key)
        elif isinstance(outcome.value, dict):
            plugin.has_teardown = "teardown_plugin" in outcome.value.get("methods", [])
        return outcome

    def loaded_in(self, key: str) -> list[Sandbox]:
        plugin = self.plugins.get(key)
        if plugin is None:
            return []
        return [s for s in self.tenants.get(plugin.tenant, []) if key in s.loaded and s.alive]

    async def unload(self, key: str) -> None:
        plugin = self.plugins.pop(key, None)
        if plugin is None:
            return
        for sandbox in self.tenants.get(plugin.tenant, []):
            if key in sandbox.loaded:
                sandbox.loaded.discard(key)
                sandbox.unloaded.add(key)
                if sandbox.alive:
                    sandbox.send(["unload", key])

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
        plugin = self.plugins.get(key)
        if plugin is None:
            return [CallOutcome.failure("LookupError", f"Plugin config {key} is not registered")] * len(batch)
        if sandbox is not None:
            if not sandbox.alive or sandbox.tenant != plugin.tenant:
                return [CallOutcome.failure("SandboxError", "The plugin sandbox was closed") for _ in batch]
            sandbox.leases += 1
            targets = [sandbox]
        else:
            parts = min(self.size, max(1, math.ceil(len(batch) / MIN_CHUNK)))
            try:
                targets = await self._lease(plugin.tenant, parts)
            except SandboxError as exc:
                return [CallOutcome.failure("SandboxError", str(exc)) for _ in batch]
        try:
            if len(targets) == 1:
                return await self._call_in(targets[0], key, plugin, method, list(batch), time_limit)
            size = math.ceil(len(batch) / len(targets))
            chunks = [list(batch[i : i + size]) for i in range(0, len(batch), size)]
            # never more chunks than sandboxes; a spare sandbox (rounding) gets none
            calls = [
                self._call_in(t, key, plugin, method, c, time_limit)
                for t, c in zip(targets, chunks, strict=False)
            ]
            results = await asyncio.gather(*calls)
            return [outcome for part in results for outcome in part]
        finally:
            self._release(targets)

    async def _call_in(
        self,
        sandbox: Sandbox,
        key: str,
        plugin: RegisteredPlugin,
        method: str,
        batch: list[list[Any]],
        time_limit: float,
    ) -> list[CallOutcome]:
        try:
            if key not in sandbox.loaded:
                sandbox.load_into(key, plugin)
            results = await sandbox.request(["call", key, method, batch, time_limit])
        except SandboxError as exc:
            name = "TimeoutError" if "responding" in str(exc) else "SandboxError"
            return [CallOutcome.failure(name, str(exc)) for _ in batch]
        return [CallOutcome(*r) for r in results]

    # ------------------------------------------------------------------ sandboxes per tenant
    def _live(self, tenant: str) -> list[Sandbox]:
        return [s for s in self.tenants.get(tenant, []) if s.alive and not s.retiring]

    async def _lease(self, tenant: str, parts: int = 1) -> list[Sandbox]:
        """Up to `parts` of `tenant`'s sandboxes, least busy first, starting them as needed:
        the first one is waited for (a slot under the cap), more only while the cap has room."""
        if self._closing:
            raise SandboxError("The plugin sandboxes are shutting down")
        parts = min(parts, self.size)
        if len(self._live(tenant)) < parts:
            lock = self._growing.setdefault(tenant, asyncio.Lock())
            async with lock:
                while len(own := self._live(tenant)) < parts and not self._closing:
                    if not await self._reserve_slot(wait=not own):
                        break
                    try:
                        await self._start_sandbox(tenant)
                    except SandboxError:
                        if own:
                            break  # an extra one: the tenant's work goes to the ones it has
                        raise
        own = self._live(tenant)
        if not own:
            raise SandboxError("The plugin sandbox could not be started")
        chosen = sorted(own, key=lambda s: s.outstanding)[:parts]
        for sandbox in chosen:
            sandbox.leases += 1
        return chosen

    def _release(self, sandboxes: list[Sandbox]) -> None:
        now = time.monotonic()
        for sandbox in sandboxes:
            sandbox.leases -= 1
            sandbox.last_used = now
            if sandbox.leases == 0 and self._slot_waiters:
                self._wake_one()  # it may be closed to make room

    async def _start_sandbox(self, tenant: str) -> Sandbox:
        """Start a sandbox for `tenant` in a slot already reserved."""
        sandbox = Sandbox(next(self._numbers), self, tenant)
        sandbox.holds_slot = True
        try:
            await sandbox.start()
        except Exception as exc:
            log.error("plugin sandbox could not be started", tenant=tenant, error=repr(exc))
            self._release_slot(sandbox)
            raise SandboxError("The plugin sandbox could not be started") from exc
        if self._closing:
            self._retire(sandbox, "shutdown", teardown=False)
            raise SandboxError("The plugin sandboxes are shutting down")
        self.started += 1
        SANDBOXES_STARTED.inc()
        self.tenants.setdefault(tenant, []).append(sandbox)
        return sandbox

    async def _reserve_slot(self, *, wait: bool) -> bool:
        """Take a place under the cap; at the cap, the least recently used idle sandbox is closed
        to make room. With `wait`, queue (first come, first served) until a place is free."""
        if not self._slot_waiters and self._take_slot(evict=wait):
            return True
        if not wait:
            return False
        front = False
        while not self._closing:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if front:
                self._slot_waiters.appendleft(waiter)
            else:
                self._slot_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the wake-up on
                else:
                    with contextlib.suppress(ValueError):
                        self._slot_waiters.remove(waiter)
                raise
            if self._closing:
                break
            if self._take_slot(evict=True):
                if self._slot_waiters and self.slots_used < self.max_alive:
                    self._wake_one()
                return True
            front = True
        raise SandboxError("The plugin sandboxes are shutting down")

    def _take_slot(self, *, evict: bool) -> bool:
        if self.slots_used < self.max_alive:
            self.slots_used += 1
            self.peak_alive = max(self.peak_alive, self.slots_used)
            SANDBOXES_ALIVE.set(self.slots_used)
            return True
        if evict:
            idle = [s for s in self.sandboxes if s.alive and not s.retiring and s.leases == 0]
            if idle:
                self._retire(min(idle, key=lambda s: s.last_used), "lru")
        return False

    def _release_slot(self, sandbox: Sandbox) -> None:
        if not sandbox.holds_slot:
            return
        sandbox.holds_slot = False
        self.slots_used -= 1
        SANDBOXES_ALIVE.set(self.slots_used)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _detach(self, sandbox: Sandbox) -> None:
        group = self.tenants.get(sandbox.tenant)
        if group is not None and sandbox in group:
            group.remove(sandbox)
            if not group:
                del self.tenants[sandbox.tenant]

    def _retire(self, sandbox: Sandbox, reason: str, *, teardown: bool = True) -> None:
        """Close `sandbox` in the background (teardown_plugin first, for configs that have it);
        its slot is free once its interpreter has ended."""
        if sandbox.retiring:
            return
        sandbox.retiring = True
        self._detach(sandbox)
        SANDBOXES_CLOSED.labels(reason).inc()
        task = asyncio.get_running_loop().create_task(self._close_retired(sandbox, teardown))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_retired(self, sandbox: Sandbox, teardown: bool) -> None:
        try:
            for key in sorted(sandbox.loaded) if teardown else []:
                plugin = self.plugins.get(key)
                if plugin is None or not plugin.has_teardown or not sandbox.alive:
                    continue
                limit = float(plugin.spec.get("timeout", 30))
                try:
                    # a retiring sandbox is not watched for being stuck: bound the wait here
                    async with asyncio.timeout(limit + 5):
                        [result] = await sandbox.request(["call", key, "teardown_plugin", [[]], limit])
                    if not result[0]:
                        log.warning("teardown_plugin failed", key=key, error=(result[2] or {}).get("message"))
                except (SandboxError, TimeoutError):
                    break
            await sandbox.close()
        finally:
            self._release_slot(sandbox)

    # ------------------------------------------------------------------ health
    async def _watch(self) -> None:
        while True:
            idle_tick = self.idle_seconds / 4 if self.idle_seconds > 0 else 1.0
            await asyncio.sleep(min(1.0, self.stuck_after / 4, max(idle_tick, 0.05)))
            now = time.monotonic()
            for sandbox in self.sandboxes:
                if sandbox.alive and sandbox.outstanding and now - sandbox.last_frame > self.stuck_after:
                    log.error("plugin sandbox stopped responding; closing it", sandbox=sandbox.number)
                    sandbox.abandon(
                        f"Script execution timed out: the plugin sandbox stopped responding for "
                        f"{self.stuck_after:g} seconds and was replaced"
                    )
                elif self.idle_seconds and not sandbox.leases and now - sandbox.last_used > self.idle_seconds:
                    self._retire(sandbox, "idle")

    def on_sandbox_lost(self, sandbox: Sandbox) -> None:
        """The sandbox ended (crashed, abandoned or closed): the tenant's next work starts a new one."""
        sandbox.alive = False
        if sandbox.retiring:
            return  # closed on purpose: its slot is freed once the interpreter has ended
        self._detach(sandbox)
        if not self._closing:
            self.replaced += 1
            SANDBOXES_CLOSED.labels("lost").inc()
            log.warning("plugin sandbox lost", sandbox=sandbox.number, tenant=sandbox.tenant)
        self._release_slot(sandbox)
