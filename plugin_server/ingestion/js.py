"""JavaScript value semantics the stored data depends on: truthiness, String(), Number(),
JSON.stringify number formatting, loose equality and UTF-16 length cuts (spec/ingestion.md §0.1, App. B)."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

import msgspec


def truthy(value: Any) -> bool:
    """JavaScript truthiness: empty lists and dicts are truthy, NaN is falsy."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value != ""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value != 0
    if isinstance(value, float):
        return not (value == 0 or math.isnan(value))
    return True


_INT64 = 2**63


class JSFloat(float):
    """A float whose JSON text differs between msgspec and JavaScript (`1e+21` vs `1e21`): the
    encoders write it as JavaScript does."""


def js_float(text: str) -> float | int:
    """A JSON number with a fraction or exponent, read as JavaScript keeps it: integral values are
    plain integers (`1.0` is stored and sent on as `1`, as the original writes it); the rare float
    msgspec would print unlike JavaScript is marked to be printed JavaScript's way."""
    value = float(text)
    if value.is_integer() and -_INT64 < value < _INT64:
        return int(value)
    if math.isfinite(value) and _PLAIN_ENCODER.encode(value).decode() != number_text(value):
        return JSFloat(value)
    return value


def encode_js_float(value: Any) -> Any:
    if isinstance(value, JSFloat):
        return msgspec.Raw(number_text(value).encode())
    raise TypeError(f"Encoding objects of type {type(value).__name__} is unsupported")


def number_text(value: float | int) -> str:
    """Number.prototype.toString: `2.0` -> `2`, `1e21` -> `1e+21`, `1e-7` -> `1e-7`."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits_tuple = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    k = len(digits)
    n = int(digits_tuple.exponent) + k  # value = 0.digits × 10^n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exponent = n - 1
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"


def js_string(value: Any) -> str:
    """JavaScript String(x) for JSON-like values (None is null; use js_string_or_undefined for absent)."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return number_text(value)
    if isinstance(value, list | tuple):
        return ",".join("" if item is None else js_string(item) for item in value)
    return "[object Object]"


_PLAIN_ENCODER = msgspec.json.Encoder()
_JSON_ENCODER = msgspec.json.Encoder(enc_hook=encode_js_float)


def json_text(value: Any) -> str:
    """Compact JSON text (JSON.stringify layout; non-ASCII kept; NaN/Infinity become null)."""
    try:
        return _JSON_ENCODER.encode(value).decode()
    except (OverflowError, TypeError, msgspec.EncodeError):
        return _json_fallback(value)


def _json_fallback(value: Any) -> str:
    # Integers beyond 64 bits, or non-string keys: slower, same layout.
    import json

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {js_string(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), separators=(",", ":"), ensure_ascii=False)


def stringify(value: Any) -> str:
    """Strings unchanged, everything else compact JSON (the original's `stringify` helper)."""
    return value if isinstance(value, str) else json_text(value)


_NUMERIC = re.compile(
    r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|Infinity)$|^0[xX][0-9a-fA-F]+$|^0[oO][0-7]+$|^0[bB][01]+$"
)


def js_number(value: Any) -> float:
    """JavaScript Number(x)."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0.0
        if not _NUMERIC.match(text):
            return math.nan
        if text[:2].lower() in ("0x", "0o", "0b"):
            return float(int(text, 0))
        return float(text)
    if isinstance(value, list):
        return js_number(js_string(value))
    return math.nan


def js_type(value: Any) -> str:
    """typeof for JSON values (null, lists and dicts are "object")."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "object"


def _to_primitive(value: Any) -> Any:
    if isinstance(value, list):
        return js_string(value)
    if isinstance(value, dict):
        return "[object Object]"
    return value


def loose_equals(a: Any, b: Any) -> bool:
    """JavaScript `a == b` for JSON values."""
    if a is None or b is None:
        return a is None and b is None
    ta, tb = js_type(a), js_type(b)
    if ta == tb:
        if ta == "object":
            return a is b
        if ta == "number":
            return float(a) == float(b)
        return bool(a == b)
    if ta == "boolean":
        return loose_equals(1 if a else 0, b)
    if tb == "boolean":
        return loose_equals(a, 1 if b else 0)
    if ta == "object":
        return loose_equals(_to_primitive(a), b)
    if tb == "object":
        return loose_equals(a, _to_primitive(b))
    # number vs string
    return js_number(a) == js_number(b)


def utf16_cut(text: str, limit: int) -> str:
    """`text.substr(0, limit)` counted in UTF-16 code units; a split surrogate pair becomes U+FFFD."""
    if len(text) <= limit // 2:
        return text
    encoded = text.encode("utf-16-le", "surrogatepass")
    if len(encoded) <= limit * 2:
        return text
    return encoded[: limit * 2].decode("utf-16-le", "replace")


def utf16_sort_key(text: str) -> bytes:
    """Sort key giving JavaScript's default (UTF-16 code unit) string order."""
    return text.encode("utf-16-be", "surrogatepass")
