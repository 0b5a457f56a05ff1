"""UUIDT: PostHog's time-ordered UUID (spec/ingestion.md §3.6), the same layout as Django's `UUIDT`."""

from __future__ import annotations

import os
import re
import time

_MAX_TRACKED_MILLISECONDS = 10_000


class UUIDTGenerator:
    """Bytes 0-5: Unix ms (big-endian); 6-7: per-ms series counter; 8-15: random."""

    __slots__ = ("_series",)

    def __init__(self) -> None:
        self._series: dict[int, int] = {}

    def new(self, unix_ms: int | None = None) -> str:
        ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
        series = self._series.get(ms)
        if series is None:
            if len(self._series) > _MAX_TRACKED_MILLISECONDS:
                self._series.clear()
            series = 0
        self._series[ms] = (series + 1) % 65536
        raw = ms.to_bytes(6, "big") + series.to_bytes(2, "big") + os.urandom(8)
        h = raw.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_DEFAULT = UUIDTGenerator()


def new_uuidt() -> str:
    return _DEFAULT.new()


_UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


def is_valid_uuid(value: object) -> bool:
    """8-4-4-4-12 hexadecimal groups, any case, no version check."""
    return isinstance(value, str) and _UUID_PATTERN.match(value) is not None
