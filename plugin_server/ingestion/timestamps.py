"""The event timestamp: client clock-skew correction, `offset`, strict and lenient parsing
(spec/ingestion.md §2.4). Times are handled as integer Unix milliseconds, like the original."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from plugin_server.ingestion.js import js_number, truthy

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_MS = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
_MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


class InvalidTimestamp(ValueError):
    """The event's time cannot be computed (the original stored NULL or `Invalid DateTime`)."""


_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T{sep}](\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)
_STRICT_ISO = re.compile(_ISO.pattern.replace("{sep}", ""))
_LENIENT_ISO = re.compile(_ISO.pattern.replace("{sep}", " "))


_DAYS_IN_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (integer arithmetic, no datetime)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _match_to_ms(m: re.Match[str]) -> int | None:
    year_text, month_text, day_text, hour, minute, second, fraction, zone = m.groups()
    year, month, day = int(year_text), int(month_text), int(day_text)
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS_IN_MONTH[month]:
        return None
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return None
    h, mi, sec = int(hour or 0), int(minute or 0), int(second or 0)
    if h > 23 or mi > 59 or sec > 59:
        return None
    ms = ((_days_from_civil(year, month, day) * 24 + h) * 60 + mi) * 60_000 + sec * 1000
    if fraction:
        ms += int((fraction + "00")[:3])
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset_minutes = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) > 2 else 0)
        ms -= sign * offset_minutes * 60_000
    return ms


# The texts parsed are few per request (`now`, `sent_at` are shared by a request's events), so
# parsed values of texts of a sensible length are cached; the parsers are pure.
_CACHED_TEXTS = 4096
_CACHED_LENGTH = 64


def parse_iso(value: Any) -> int | None:
    """Strict ISO-8601 (luxon `fromISO`); no offset means UTC. None when invalid."""
    if not isinstance(value, str):
        return None
    return _parse_strict(value) if len(value) <= _CACHED_LENGTH else _parse_strict.__wrapped__(value)


@functools.lru_cache(maxsize=_CACHED_TEXTS)
def _parse_strict(text: str) -> int | None:
    m = _STRICT_ISO.match(text)
    return _match_to_ms(m) if m else None


def parse_lenient(value: Any) -> int | None:
    """The JavaScript `Date` constructor: epoch ms numbers, ISO with `T` or space, RFC 2822."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value) if value == value and abs(value) <= 8.64e15 else None
    if not isinstance(value, str):
        return None
    if len(value) > _CACHED_LENGTH:
        return _parse_lenient_text.__wrapped__(value)
    return _parse_lenient_text(value)


@functools.lru_cache(maxsize=_CACHED_TEXTS)
def _parse_lenient_text(value: str) -> int | None:
    text = value.strip()
    m = _LENIENT_ISO.match(text)
    if m:
        return _match_to_ms(m)
    try:
        dt = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // timedelta(milliseconds=1)


@functools.lru_cache(maxsize=_CACHED_TEXTS)
def to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def from_datetime(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


def iso_text(ms: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    dt = to_datetime(ms)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


def ch_text(ms: int) -> str:
    """ClickHouse `YYYY-MM-DD HH:MM:SS.mmm`."""
    dt = to_datetime(ms)
    return f"{dt:%Y-%m-%d %H:%M:%S}.{dt.microsecond // 1000:03d}"


def parse_sent_at(value: Any) -> int | None:
    """`sent_at` as ms, or None when absent. An unparsable value counts as absent everywhere
    (spec §5.2 #12 Recommendation; the original went on with an invalid date)."""
    return parse_iso(value) if truthy(value) else None


def compute_timestamp(timestamp: Any, offset: Any, now_ms: int | None, sent_at_ms: int | None) -> int:
    """The event time in ms (§2.4). Raises InvalidTimestamp instead of storing an invalid time
    (§2.4 Recommendation)."""
    result: int | None
    if truthy(timestamp):
        result = None
        if sent_at_ms is not None and now_ms is not None:
            client_ms = parse_lenient(timestamp)
            if client_ms is not None:
                result = now_ms + (client_ms - sent_at_ms)
        if result is None:
            result = parse_iso(timestamp)
        if result is None:
            raise InvalidTimestamp(f"Invalid timestamp: {timestamp!r}")
    elif truthy(offset):
        offset_ms = js_number(offset)
        if offset_ms != offset_ms:
            raise InvalidTimestamp(f"Invalid offset: {offset!r}")
        if now_ms is None:
            raise InvalidTimestamp("Invalid or missing `now`")
        result = now_ms - int(offset_ms)
    else:
        if now_ms is None:
            raise InvalidTimestamp("Invalid or missing `now`")
        result = now_ms
    if not _MIN_MS <= result <= _MAX_MS:
        raise InvalidTimestamp(f"Timestamp out of range: {timestamp!r}")
    return result
