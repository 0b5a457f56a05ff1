"""UUIDT: time-sortable ids (ms timestamp, per-ms series, 64 random bits), as PostHog makes them."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_series = 0


def uuidt_bytes(unix_ms: int | None = None) -> bytes:
    global _last_ms, _series
    with _lock:
        ms = int(time.time() * 1000) if unix_ms is None else unix_ms
        if ms == _last_ms:
            _series = (_series + 1) & 0xFFFF
        else:
            # Only the current millisecond needs a counter: ids are made in time order here.
            _last_ms, _series = ms, 0
        series = _series
    return ms.to_bytes(6, "big") + series.to_bytes(2, "big") + os.urandom(8)


def uuidt(unix_ms: int | None = None) -> str:
    """A new UUIDT rendered as lowercase 8-4-4-4-12 hex."""
    return str(uuid.UUID(bytes=uuidt_bytes(unix_ms)))


_UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


def is_valid_uuid(value: object) -> bool:
    """8-4-4-4-12 hexadecimal groups, any case, no version check (what the pipeline accepts)."""
    return isinstance(value, str) and _UUID_PATTERN.match(value) is not None
