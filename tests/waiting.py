"""Waiting on a condition with a deadline, never a fixed sleep: busy 2-core machines are slow."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def wait_for(condition: Callable[[], Any], within: float = 10.0, every: float = 0.02) -> None:
    """Until `condition()` (a plain or async callable) is truthy; AssertionError after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(every)
