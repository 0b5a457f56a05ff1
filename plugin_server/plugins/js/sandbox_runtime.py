"""The JS runtime behind the plugin runtime seam (plugin_server/plugins/runtime.py): the same
lifecycle, host services and error handling as Python plugins, with the VM of vm.py."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import Coroutine, Sequence
from typing import Any

import aiohttp

from plugin_server.logs import get_logger
from plugin_server.plugins.capabilities import METHOD_NAMES, js_task_name, python_task_name
from plugin_server.plugins.host_services import HostServices, PluginContext, unavailable_message
from plugin_server.plugins.js.isolate import JSError
from plugin_server.plugins.js.transpile import Transpiler
from plugin_server.plugins.js.vm import Attachment, CallFailed, JSPluginVM, PluginLoadError, VMBroken, VMSpec
from plugin_server.plugins.pool import CallOutcome
from plugin_server.plugins.runtime import RuntimeSpec
from plugin_server.services.destinations import DestinationFailure

log = get_logger(__name__)
_OWNERS = itertools.count(1)
JS_METHOD_OF = dict(METHOD_NAMES)
PY_METHOD_OF = {js: py for py, js in METHOD_NAMES.items()}
# Host calls whose service name differs from the JS op name.
SERVICE_NAMES = {"storage.del": "storage.delete"}
UNAVAILABLE = {
    "geoip.locate": unavailable_message("geoip.locate"),
    "jobs.enqueue": unavailable_message("jobs.enqueue"),
    "posthog.capture": "posthog.capture is not available in this PostHog instance!",
    "posthog.api": "posthog.api is not available in this PostHog instance!",
}


class ServicesHost:
    """A `JSHost` that answers through the shared HostServices, so JS and Python plugins reach the
    same cache, storage, logs, metrics, jobs, capture and geoip."""

    def __init__(self, context: PluginContext, services: HostServices) -> None:
        self.context = context
        self.services = services
        self.http: aiohttp.ClientSession | None = None
        self.owner = f"js-{next(_OWNERS)}"
        # The loop keeps only weak references to tasks: hold them until they finish.
        self._background: set[asyncio.Task[Any]] = set()

    async def call(self, op: str, args: list[Any]) -> Any:
        name = SERVICE_NAMES.get(op, op)
        if op == "fetch" and not self.services.has("fetch"):
            if self.http is None:
                self.http = aiohttp.ClientSession()
            return await http_fetch(self.http, args[0], args[1])
        if not self.services.has(name):
            raise JSError("Error", UNAVAILABLE.get(op, f"{op} is not available in this PostHog instance!"))
        if op == "fetch":
            args = [args[0], _fetch_options(args[1])]
        elif op == "pg.connect":  # what this VM opens, its close() ends
            args = [*args[:2], self.owner]
        try:
            value = await self.services.call(self.context, name, args)
        except DestinationFailure as exc:
            raise JSError(exc.js_name, exc.message, props=exc.fields) from None
        if op in ("fetch", "posthog.api"):  # the services answer (status, text, url, headers, body)
            return _js_response(value)
        if op == "storage.get":  # the service answers (found, text)
            found, text = value
            return text if found else None
        return value

    def notify(self, op: str, args: list[Any]) -> None:
        if op == "metric":
            self._in_background(self.services.call(self.context, "metrics.update", args))
        elif op == "unhandledRejection" and self.services.has("errors.record"):
            self._in_background(self.services.call(self.context, "errors.record", args))
        elif op == "unhandledRejection":
            log.warning(
                "unhandled promise rejection in plugin",
                plugin_config_id=self.context.plugin_config_id,
                error=args[0] if args else None,
            )
        else:
            log.warning(
                "unknown notification from a JS plugin", op=op, plugin_config_id=self.context.plugin_config_id
            )

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.services.has("pg.release"):  # the connections this VM's `pg` left open
            try:
                await self.services.call(self.context, "pg.release", [self.owner])
            except Exception:
                log.exception("closing a plugin's Postgres connections failed")


class JSRuntime:
    """`PluginRuntime` for JS/TS plugin configs: one V8 isolate each."""

    def __init__(
        self,
        spec: RuntimeSpec,
        services: HostServices,
        transpiler: Transpiler,
        memory_limit_mb: int = 128,
        *,
        expose_test_timer: bool = False,
    ) -> None:
        self.spec = spec
        self.host = ServicesHost(spec.context, services)
        self.transpiler = transpiler
        self.memory_limit_mb = memory_limit_mb
        self.expose_test_timer = expose_test_timer
        self.vm: JSPluginVM | None = None

    async def load(self) -> CallOutcome:
        config = self.spec.config
        vm_spec = VMSpec(
            source=self.spec.source.text,
            config=dict(config.config),
            attachments={
                k: Attachment(a.content_type, a.file_name, a.contents) for k, a in config.attachments.items()
            },
            task_timeout=self.spec.task_timeout,
            memory_limit_mb=self.memory_limit_mb,
            expose_test_timer=self.expose_test_timer,
        )
        try:
            self.vm = await JSPluginVM.create(vm_spec, self.host, self.transpiler)
            if self.vm.has_method("setupPlugin"):
                await self.vm.call_method("setupPlugin")
        except (PluginLoadError, CallFailed) as exc:
            return _failure(exc.error)
        except VMBroken as exc:
            return _failure(JSError("MemoryError", str(exc)))
        exports = self.vm.exports
        return CallOutcome(
            True,
            {
                "methods": [PY_METHOD_OF[m] for m in exports.methods],
                "run_every": [python_task_name(n) for n in exports.schedule],
                "jobs": list(exports.jobs),
                "metrics": dict(exports.metrics),
            },
        )

    async def call(self, method: str, batch: Sequence[list[Any]], time_limit: float) -> list[CallOutcome]:
        return list(await asyncio.gather(*(self._call_one(method, args) for args in batch)))

    async def _call_one(self, method: str, args: list[Any]) -> CallOutcome:
        vm = self.vm
        if vm is None:
            return CallOutcome.failure("Error", "plugin not loaded")
        try:
            if method in JS_METHOD_OF:
                value = await vm.call_method(JS_METHOD_OF[method], *args)
            elif method.startswith("job:"):
                value = await vm.run_job(method[4:], args[0] if args else None)
            elif method.startswith("run_every"):
                value = await vm.run_task(js_task_name(method))
            else:
                return CallOutcome.failure("TypeError", f"{method} is not a function")
        except CallFailed as exc:
            outcome = _failure(exc.error)
            outcome.mutated_input = exc.input
            return outcome
        except VMBroken as exc:
            return _failure(JSError("MemoryError", str(exc)))
        return CallOutcome(True, value)

    async def teardown(self, time_limit: float) -> CallOutcome:
        if self.vm is None or not self.vm.has_method("teardownPlugin"):
            return CallOutcome(True)
        [outcome] = await self.call("teardown_plugin", [[]], time_limit)
        return outcome

    async def close(self) -> None:
        if self.vm is not None:
            await self.vm.close()
        await self.host.close()


async def http_fetch(session: aiohttp.ClientSession, url: str, request: dict[str, Any]) -> dict[str, Any]:
    """A plugin's `fetch` when no fetch service is registered (request and response as prelude.js
    encodes them)."""
    body = base64.b64decode(request["body"]) if request.get("body") is not None else None
    timeout = aiohttp.ClientTimeout(total=request["timeout"] / 1000) if request.get("timeout") else None
    try:
        async with session.request(
            request["method"],
            url,
            headers=[(k, v) for k, v in request.get("headers", [])],
            data=body,
            allow_redirects=request.get("redirect", "follow") == "follow",
            timeout=timeout,
        ) as response:
            content = await response.read()
            return {
                "status": response.status,
                "statusText": response.reason or "",
                "url": str(response.url),
                "headers": list(response.headers.items()),
                "body": base64.b64encode(content).decode(),
            }
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise JSError("FetchError", f"request to {url} failed, reason: {reason}") from exc


def _fetch_options(request: dict[str, Any]) -> dict[str, Any]:
    """prelude.js's request (base64 body, timeout in ms, 0 = none) as the fetch service takes it."""
    body = request.get("body")
    timeout = request.get("timeout")
    return {
        "method": request.get("method") or "GET",
        "headers": [tuple(pair) for pair in request.get("headers") or []],
        "body": base64.b64decode(body) if body is not None else None,
        "timeout": timeout / 1000 if timeout else None,
    }


def _js_response(value: Any) -> dict[str, Any]:
    """A service's (status, status_text, url, headers, body) as prelude.js's Response reads it."""
    status, status_text, url, headers, body = value
    if isinstance(body, str):
        body = body.encode()
    return {
        "status": status,
        "statusText": status_text,
        "url": url,
        "headers": [list(pair) for pair in (headers.items() if isinstance(headers, dict) else headers)],
        "body": base64.b64encode(body or b"").decode(),
    }


def _failure(error: JSError) -> CallOutcome:
    data: dict[str, Any] = {
        "name": error.name,
        "message": error.message,
        "stack": error.stack,
        "retry": error.name == "RetryError",
    }
    if error.caller is not None:
        data["caller"] = error.caller
    return CallOutcome(False, None, data)
