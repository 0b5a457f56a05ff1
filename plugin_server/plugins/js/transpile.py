"""Turns a JS/TS plugin source into the CommonJS script the plugin VM evaluates.

Babel (the pinned `@babel/standalone` bundle that `make install` vendors) runs in a V8 isolate of
its own with the transforms of transforms.js: TypeScript stripping, ES modules to CommonJS,
"use strict", import rewriting against the allowed list, loop and await time guards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from contextlib import ExitStack
from pathlib import Path

from py_mini_racer import JSEvalException, MiniRacer, mini_racer

HERE = Path(__file__).parent
BABEL_BUNDLE = HERE / "vendor" / "babel.min.js"
TRANSFORMS = HERE / "transforms.js"

# Import specifiers a plugin may use (spec plugins.md §4.10); what each one provides is in prelude.js.
ALLOWED_IMPORTS: tuple[str, ...] = (
    "@google-cloud/bigquery",
    "@google-cloud/pubsub",
    "@google-cloud/storage",
    "@posthog/plugin-contrib",
    "@posthog/plugin-scaffold",
    "aws-sdk",
    "generic-pool",
    "node-fetch",
    "snowflake-sdk",
    "crypto",
    "jsonwebtoken",
    "faker",
    "pg",
    "stream",
    "url",
    "zlib",
)

# Allowed by the original but not provided here: a plugin importing one fails at load with one
# line naming it (rather than finding `undefined` at first use).
UNPROVIDED_IMPORTS: frozenset[str] = frozenset(
    {
        "@google-cloud/pubsub",
        "@google-cloud/storage",
        "faker",
        "generic-pool",
        "snowflake-sdk",
        "stream",
    }
)

_CACHE_SIZE = 256


class TranspileError(Exception):
    """The source could not be transformed (a syntax error, a forbidden import)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class Transpiler:
    """One Babel isolate, created on first use and shared by all plugin loads.

    Outputs are memoised by (source, allowed imports, timeout) so reloading the same plugin
    costs nothing."""

    def __init__(
        self,
        allowed_imports: tuple[str, ...] = ALLOWED_IMPORTS,
        unprovided_imports: frozenset[str] = UNPROVIDED_IMPORTS,
    ) -> None:
        self._allowed = list(allowed_imports)
        self._unprovided = sorted(unprovided_imports)
        self._stack = ExitStack()
        self._racer: MiniRacer | None = None
        self._lock = asyncio.Lock()
        self._cache: OrderedDict[str, str] = OrderedDict()

    async def _ensure(self) -> MiniRacer:
        if self._racer is None:
            if not BABEL_BUNDLE.exists():
                raise RuntimeError(
                    f"{BABEL_BUNDLE} is missing: run `make install` to vendor the JS transpiler"
                )
            racer = self._stack.enter_context(mini_racer(asyncio.get_running_loop()))
            await racer.eval_cancelable(BABEL_BUNDLE.read_text())
            await racer.eval_cancelable(TRANSFORMS.read_text())
            self._racer = racer
        return self._racer

    async def transform(self, source: str, timeout_seconds: float) -> str:
        timeout_text = format_seconds(timeout_seconds)
        key = hashlib.sha256(f"{timeout_text}\0{source}".encode()).hexdigest()
        if (cached := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return cached
        async with self._lock:
            racer = await self._ensure()
            call = (
                f"transformPluginSource({json.dumps(source)}, {json.dumps(self._allowed)},"
                f" {json.dumps(self._unprovided)}, {timeout_text})"
            )
            try:
                raw = await racer.eval_cancelable(call)
            except JSEvalException as exc:  # the transpiler itself failed (e.g. ran out of memory)
                raise TranspileError("Error", str(exc)) from exc
        result = json.loads(str(raw))
        if "error" in result:
            raise TranspileError(result["error"]["name"], result["error"]["message"])
        code: str = result["code"]
        self._cache[key] = code
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return code

    def close(self) -> None:
        self._racer = None
        self._stack.close()


def format_seconds(seconds: float) -> str:
    """TASK_TIMEOUT as the original prints it: `1`, `30`, `0.5`."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))
