"""Property filters of action steps, with ClickHouse-like value casting (spec/ingestion.md §2.12.4)."""

from __future__ import annotations

import math
import re
from typing import Any

from plugin_server.ingestion.js import js_number, js_string, js_type, loose_equals, stringify

EMPTY_MATCHING_OPERATORS = frozenset({"is_not_set", "is_not", "not_icontains", "not_regex"})
_TRUE_WORDS = frozenset({"y", "yes", "t", "true", "on", "1"})
_FALSE_WORDS = frozenset({"n", "no", "f", "false", "off", "0"})


def _cast_number(value: Any) -> float:
    text = js_string(value).lower()
    if text in _TRUE_WORDS:
        return 1.0
    if text in _FALSE_WORDS:
        return 0.0
    return js_number(value)


def _relational_number(value: Any) -> float:
    if isinstance(value, list):
        value = js_string(value)
    elif isinstance(value, dict):
        return math.nan
    return js_number(value)


def _compare_numbers(a: float, b: float, operator: str) -> bool:
    if operator == "is_not":
        return a != b
    if math.isnan(a) or math.isnan(b):
        return False
    if operator == "exact":
        return a == b
    if operator == "gt":
        return a > b
    return a < b


def casting_compare(a: Any, b: Any, operator: str) -> bool:
    """Compare the way ClickHouse does after casting: directly first, then as numbers."""
    if operator == "exact":
        direct = loose_equals(a, b)
    elif operator == "is_not":
        direct = not loose_equals(a, b)
    elif operator in ("gt", "lt") and not isinstance(a, str) and not isinstance(b, str):
        x, y = _relational_number(a), _relational_number(b)
        direct = _compare_numbers(x, y, operator) if operator in ("gt", "lt") else False
    else:
        direct = False
    if direct:
        return True
    if js_type(a) != js_type(b):
        return _compare_numbers(_cast_number(a), _cast_number(b), operator)
    return False


def check_property_filter(props: dict[str, Any] | None, prop_filter: dict[str, Any]) -> bool:
    """One `{key, value, operator}` filter against a property dict. Raises on an invalid regex."""
    operator = prop_filter.get("operator") or "exact"
    key = prop_filter.get("key")
    if props is None or key not in props:
        return operator in EMPTY_MATCHING_OPERATORS
    found = props[key]
    value = prop_filter.get("value")
    candidates = value if isinstance(value, list) else [value]
    if operator in ("icontains", "not_icontains", "regex", "not_regex") and not isinstance(found, str):
        return operator in EMPTY_MATCHING_OPERATORS
    if operator in ("gt", "lt") and not isinstance(found, int | float):
        return operator in EMPTY_MATCHING_OPERATORS
    if operator == "is_set":
        return True
    if operator == "is_not_set":
        return False
    for candidate in candidates:
        if operator == "icontains":
            ok = stringify(candidate).lower() in found.lower()
        elif operator == "not_icontains":
            ok = stringify(candidate).lower() not in found.lower()
        elif operator == "regex":
            ok = re.search(stringify(candidate), found) is not None
        elif operator == "not_regex":
            ok = re.search(stringify(candidate), found) is None
        elif operator in ("is_not", "gt", "lt"):
            ok = casting_compare(found, candidate, operator)
        else:
            ok = casting_compare(found, candidate, "exact")
        if ok:
            return True
    return False
