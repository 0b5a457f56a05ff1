"""One V8 isolate (mini-racer) running the plugin prelude, driven without blocking the event loop.

mini-racer runs each isolate on its own native thread and reports results through callbacks, so
JS code uses a core of its own while the asyncio loop goes on. Every exchange with the isolate is
one `__pluginDispatch` call carrying a JSON batch of messages each way; the isolate rings a bell
(a JS-to-Python callback) when it has messages to collect between exchanges.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

from py_mini_racer import JSEvalException, JSOOMException, MiniRacer, mini_racer

from plugin_server.plugins.js.libraries import library_source

PRELUDE = (Path(__file__).parent / "prelude.js").read_text()
_V8_ERROR_LINE = re.compile(r"^(?:[^\n]*?:\d+: )?(?P<name>[A-Za-z_$][\w$]*): (?P<message>.*)$", re.MULTILINE)


class IsolateOutOfMemory(Exception):
    """The isolate reached its hard memory limit; V8 cannot run it again."""


class IsolateTimeout(Exception):
    """Synchronous JS ran past its deadline and was terminated."""


class JSError(Exception):
    """A JS exception, with the JS name, message and stack."""

    def __init__(
        self,
        name: str,
        message: str,
        stack: str = "",
        caller: str | None = None,
        props: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.stack = stack
        self.caller = caller
        self.props = props or {}  # extra fields a host failure gives the JS error (e.g. `code`)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> JSError:
        return cls(
            str(data.get("name", "Error")),
            str(data.get("message", "")),
            str(data.get("stack", "")),
            data.get("caller"),
        )

    @classmethod
    def from_v8(cls, exc: JSEvalException) -> JSError:
        """mini-racer reports a thrown exception as text: `<file>:<line>: Name: message` + stack."""
        text = str(exc)
        lines = text.split("\n\n", 1)
        stack = lines[1].strip() if len(lines) > 1 else ""
        match = _V8_ERROR_LINE.search(stack) or _V8_ERROR_LINE.search(text)
        if match is None:
            return cls("Error", text.strip(), stack)
        return cls(match["name"], match["message"], stack)


class Isolate:
    """A V8 isolate with the prelude loaded and a hard memory limit."""

    def __init__(self, racer: MiniRacer, stack: ExitStack, on_bell: Callable[[], None]) -> None:
        self._racer = racer
        self._stack = stack
        self._ctx: Any = racer._ctx  # the exchange uses mini-racer's cancelable calls directly
        self._on_bell = on_bell
        self._dispatch: Any = None
        self._no_args: Any = None
        self.closed = False

    @classmethod
    async def start(
        cls,
        memory_limit_bytes: int,
        on_bell: Callable[[], None],
        spec: dict[str, Any],
        libraries: tuple[str, ...] = ("buffer",),
    ) -> Isolate:
        stack = ExitStack()
        try:
            racer = stack.enter_context(mini_racer(asyncio.get_running_loop()))
            racer.set_hard_memory_limit(memory_limit_bytes)
            isolate = cls(racer, stack, on_bell)
            await isolate._boot(spec, libraries)
        except BaseException:
            stack.close()
            raise
        return isolate

    async def _boot(self, spec: dict[str, Any], libraries: tuple[str, ...]) -> None:
        ctx = self._ctx
        for name in libraries:  # the prelude reads the factories they register
            await self._racer.eval_cancelable(library_source(name))
        await self._racer.eval_cancelable(PRELUDE)
        bell = self._stack.enter_context(ctx._register_js_notification(lambda _handle: self._on_bell()))
        configure = await self._racer.eval_cancelable("__pluginConfigure")
        await ctx.call_function_cancelable(configure, bell, json.dumps(spec))
        self._dispatch = ctx._python_to_value_handle(await self._racer.eval_cancelable("__pluginDispatch"))
        self._no_args = ctx._python_to_value_handle(await self._racer.eval_cancelable("[]"))

    async def evaluate(self, code: str, deadline: float) -> None:
        """Run the plugin's script at the top level (so its functions and vars become globals)."""
        await self._run(self._racer.eval_cancelable(code), deadline)

    async def exchange(self, messages: list[dict[str, Any]], deadline: float) -> list[dict[str, Any]]:
        """Deliver messages and collect what the isolate produced; terminate JS past the deadline."""
        ctx = self._ctx
        payload = ctx._python_to_value_handle(json.dumps(messages, separators=(",", ":")))
        call = ctx._run_cancelable_mr_task(
            ctx._dll.mr_call_function, self._dispatch.raw, payload.raw, self._no_args.raw
        )
        raw = await self._run(call, deadline)
        return cast(list[dict[str, Any]], json.loads(cast(str, raw)))

    async def _run(self, call: Awaitable[Any], deadline: float) -> Any:
        """Await a V8 task, turning its failures into the isolate's errors."""
        try:
            return await asyncio.wait_for(call, deadline)
        except TimeoutError as exc:
            raise IsolateTimeout() from exc
        except JSOOMException as exc:
            raise IsolateOutOfMemory() from exc
        except JSEvalException as exc:
            if self._racer.was_hard_memory_limit_reached():
                raise IsolateOutOfMemory() from exc
            raise JSError.from_v8(exc) from exc

    def heap_stats(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._racer.heap_stats())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._dispatch = self._no_args = None
            self._stack.close()
