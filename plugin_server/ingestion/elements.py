"""Autocaptured elements: extraction from `$elements`, the element-group hash (Postgres mode)
and the elements chain string (Kafka mode) (spec/ingestion.md §2.11)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from plugin_server.ingestion.js import js_string, number_text, truthy, utf16_cut, utf16_sort_key
from plugin_server.ingestion.properties import InvalidEvent

Element = dict[str, Any]

TEXT_LIMIT = 400
HREF_LIMIT = 2048
CLASS_LIMIT = 200  # posthog_element.attr_class is varchar(200)[]


class InvalidElements(InvalidEvent):
    """`$elements` cannot be turned into elements (the original crashed on these too)."""


def _optional_text(el: dict[str, Any], key: str, limit: int) -> str | None:
    value = el.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidElements(f"element {key} must be a string, got {type(value).__name__}")
    return utf16_cut(value, limit)


def extract_elements(raw: list[Any]) -> list[Element]:
    """One element dict per `$elements` entry; keys whose source is absent are left out."""
    if not isinstance(raw, list):
        raise InvalidElements(f"$elements must be a list, got {type(raw).__name__}")
    elements: list[Element] = []
    for el in raw:
        if not isinstance(el, dict):
            raise InvalidElements(f"each element must be an object, got {type(el).__name__}")
        element: Element = {}
        text = _optional_text(el, "$el_text", TEXT_LIMIT)
        if text is not None:
            element["text"] = text
        if "tag_name" in el:
            element["tag_name"] = el["tag_name"]
        href = _optional_text(el, "attr__href", HREF_LIMIT)
        if href is not None:
            element["href"] = href
        classes = el.get("attr__class")
        if classes is not None:
            if not isinstance(classes, str):
                raise InvalidElements(f"element attr__class must be a string, got {type(classes).__name__}")
            element["attr_class"] = classes.split(" ")
        for source, target in (
            ("attr__id", "attr_id"),
            ("nth_child", "nth_child"),
            ("nth_of_type", "nth_of_type"),
        ):
            if source in el:
                element[target] = el[source]
        element["attributes"] = {k: v for k, v in el.items() if k.startswith("attr__")}
        elements.append(element)
    return elements


# -- element group hash: Python `json.dumps(sort_keys=True)` layout with JavaScript number text


def _hash_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code <= 0x7F:
            out.append(ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


_SHORT_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _hash_dumps(value: Any) -> str:
    if isinstance(value, dict):
        keys = sorted(value, key=utf16_sort_key)
        return "{" + ", ".join(f"{_hash_string(k)}: {_hash_dumps(value[k])}" for k in keys) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_hash_dumps(v) for v in value) + "]"
    if isinstance(value, str):
        return _hash_string(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = number_text(value)
        return "null" if text in ("NaN", "Infinity", "-Infinity") else text
    return json.dumps(value)


_HASH_KEYS = ("attributes", "text", "tag_name", "href", "attr_id", "attr_class", "nth_child", "nth_of_type")


def elements_hash(elements: list[Element]) -> str:
    """MD5 of the ordered elements, identical to the original's `hashElements`."""
    rows = []
    for index, element in enumerate(elements):
        row = {key: element.get(key) for key in _HASH_KEYS}
        row["order"] = index
        rows.append(row)
    return hashlib.md5(_hash_dumps(rows).encode()).hexdigest()


# -- element rows for posthog_element


def _text_column(value: Any) -> str | None:
    return None if value is None else js_string(value)


def _int_column(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    try:
        return int(value) if not isinstance(value, float) else int(value) if value.is_integer() else None
    except (TypeError, ValueError):
        raise InvalidElements(f"element {name} must be an integer, got {value!r}") from None


def element_rows(elements: list[Element]) -> list[tuple[Any, ...]]:
    """Values for (text, tag_name, href, attr_id, nth_child, nth_of_type, attributes, "order", attr_class)."""
    rows = []
    for index, element in enumerate(elements):
        classes = element.get("attr_class")
        if classes is not None:
            classes = [js_string(c) for c in classes]
            if any(len(c) > CLASS_LIMIT for c in classes):
                raise InvalidElements(f"element class longer than {CLASS_LIMIT} characters")
        rows.append(
            (
                _text_column(element.get("text")),
                _text_column(element.get("tag_name")),
                _text_column(element.get("href")),
                _text_column(element.get("attr_id")),
                _int_column(element.get("nth_child"), "nth_child"),
                _int_column(element.get("nth_of_type"), "nth_of_type"),
                element.get("attributes") or {},
                index,
                classes,
            )
        )
    return rows


# -- elements chain (Kafka mode)

# ICU root collation, approximated: case-insensitive first, punctuation before digits before
# letters, `_` before `-`; lower case before upper case breaks ties.
_PUNCTUATION_ORDER = " _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$"


def _collation_key(text: str) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    primary = []
    for ch in text:
        low = ch.lower()
        position = _PUNCTUATION_ORDER.find(low)
        if position >= 0:
            primary.append((0, position))
        elif low.isdigit():
            primary.append((1, ord(low)))
        else:
            primary.append((2, ord(low)))
    tertiary = tuple(1 if ch.isupper() else 0 for ch in text)
    return tuple(primary), tertiary


def _escape_quotes(text: str) -> str:
    return text.replace('"', '\\"')


def elements_to_chain(elements: list[Element]) -> str:
    """`tag.class1.class2:attr="v"…` per element, joined by `;` (the original's `elementsToString`)."""
    parts = []
    for element in elements:
        out = ""
        if truthy(element.get("tag_name")):
            out += js_string(element["tag_name"])
        classes = element.get("attr_class")
        if classes is not None:
            classes.sort(key=utf16_sort_key)
            for cls in classes:
                out += "." + js_string(cls).replace('"', "")
        attributes: dict[str, Any] = {}
        if truthy(element.get("text")):
            attributes["text"] = element["text"]
        attributes["nth-child"] = element.get("nth_child") or 0
        attributes["nth-of-type"] = element.get("nth_of_type") or 0
        if truthy(element.get("href")):
            attributes["href"] = element["href"]
        if truthy(element.get("attr_id")):
            attributes["attr_id"] = element["attr_id"]
        attributes.update(element.get("attributes") or {})
        out += ":" + "".join(
            f'{_escape_quotes(key)}="{_escape_quotes(js_string(attributes[key]))}"'
            for key in sorted(attributes, key=_collation_key)
        )
        parts.append(out)
    return ";".join(parts)


_SPLIT_CHAIN = re.compile(r'(?:[^\s;"]|"(?:\\.|[^"])*")+')
_SPLIT_CLASSES = re.compile(r"(.*?)($|:([a-zA-Z\-_0-9]*=.*))")
_PARSE_ATTRIBUTES = re.compile(r'((.*?)="(.*?[^\\])")')


def chain_to_elements(chain: str) -> list[Element]:
    """Parse a chain string back into elements (used to read back what Kafka mode wrote)."""
    elements: list[Element] = []
    for order, el_string in enumerate(_SPLIT_CHAIN.findall(chain)):
        m = _SPLIT_CLASSES.match(el_string)
        if not m:
            continue
        element: Element = {"attributes": {}, "order": order}
        head = m.group(1)
        if head:
            tag, *classes = head.split(".")
            element["tag_name"] = tag
            if classes:
                element["attr_class"] = [c for c in classes if c]
        for attr in _PARSE_ATTRIBUTES.findall(m.group(3) or ""):
            key, value = attr[1], attr[2]
            if key == "href":
                element["href"] = value
            elif key == "nth-child":
                element["nth_child"] = int(value)
            elif key == "nth-of-type":
                element["nth_of_type"] = int(value)
            elif key == "text":
                element["text"] = value
            elif key == "attr_id":
                element["attr_id"] = value
            else:
                element["attributes"][key] = value
        elements.append(element)
    return elements
