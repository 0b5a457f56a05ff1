"""UUIDT: time-sortable ids (ms timestamp, per-ms series, 64 random bits), as PostHog makes them."""

from __future__ import annotations

import os
import re
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_series = 0
# Random bytes are read from the OS in blocks: one system call per 512 ids instead of one each.
_RANDOM_BLOCK = 4096
_random = b""
_random_at = 0


def _next(unix_ms: int | None) -> tuple[int, int, bytes]:
    global _last_ms, _series, _random, _random_at
    with _lock:
        ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
        if ms == _last_ms:
            _series = (_series + 1) & 0xFFFF
        else:
            # Only the current millisecond needs a counter: ids are made in time order here.
            _last_ms, _series = ms, 0
        if _random_at >= len(_random):
            _random, _random_at = os.urandom(_RANDOM_BLOCK), 0
        random = _random[_random_at : _random_at + 8]
        _random_at += 8
        return ms, _series, random


def uuidt_bytes(unix_ms: int | None = None) -> bytes:
    ms, series, random = _next(unix_ms)
    return ms.to_bytes(6, "big") + series.to_bytes(2, "big") + random


def uuidt(unix_ms: int | None = None) -> str:
    """A new UUIDT rendered as lowercase 8-4-4-4-12 hex."""
    h = uuidt_bytes(unix_ms).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


def is_valid_uuid(value: object) -> bool:
    """8-4-4-4-12 hexadecimal groups, any case, no version check (what the pipeline accepts)."""
    return isinstance(value, str) and _UUID_PATTERN.match(value) is not None
