"""UUIDT: PostHog's time-ordered UUID (48-bit Unix ms, 16-bit per-ms series, 64 random bits)."""

from __future__ import annotations

import os
import time

_SERIES_MEMORY = 10_000
_series_per_ms: dict[int, int] = {}


def _next_series(unix_ms: int) -> int:
    series = _series_per_ms.get(unix_ms, 0)
    if len(_series_per_ms) > _SERIES_MEMORY:
        _series_per_ms.clear()
    _series_per_ms[unix_ms] = (series + 1) % 65_536
    return series


def uuidt_int(unix_ms: int | None = None) -> int:
    """The 128-bit value of a new UUIDT (same layout as Django's `posthog.models.utils.UUIDT`)."""
    if unix_ms is None:
        unix_ms = time.time_ns() // 1_000_000
    series = _next_series(unix_ms)
    return ((unix_ms & 0xFFFF_FFFF_FFFF) << 80) | (series << 64) | int.from_bytes(os.urandom(8))


def uuidt(unix_ms: int | None = None) -> str:
    """A new UUIDT as lowercase 8-4-4-4-12 hex (no RFC 4122 version or variant bits)."""
    h = f"{uuidt_int(unix_ms):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
