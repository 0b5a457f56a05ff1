"""CSS-selector matching against autocaptured elements (innermost first) (spec/ingestion.md §2.12.5).
Unsupported pseudo-classes are ignored (the original looped forever on them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_ATTRIBUTE = re.compile(r"""\[(.+?)=(?:'(.*?)'|"(.*?)")\]""")
_PSEUDO = re.compile(r":([a-zA-Z\-]+)\((\d+)\)")
_TAG = re.compile(r"^[a-zA-Z0-9]+")


@dataclass(slots=True)
class SelectorPart:
    direct_descendant: bool
    requirements: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    def matches(self, element: dict[str, Any]) -> bool:
        for key, value in self.requirements.items():
            if element.get(key) != value:
                return False
        if self.classes:
            element_classes = element.get("attr_class")
            if not element_classes or not all(c in element_classes for c in self.classes):
                return False
        if self.attributes:
            attributes = element.get("attributes") or {}
            for key, value in self.attributes.items():
                if attributes.get(f"attr__{key}") != value:
                    return False
        return True


def _unescape_class(name: str) -> str:
    return "\\".join(piece.replace("\\", "") for piece in name.split("\\\\"))


def _parse_part(token: str, direct_descendant: bool) -> SelectorPart:
    part = SelectorPart(direct_descendant)
    while m := _ATTRIBUTE.search(token):
        name = m.group(1).lower()
        value = m.group(2) if m.group(2) is not None else m.group(3)
        if name == "id":
            part.requirements["attr_id"] = value.lower()
        elif name == "href":
            part.requirements["href"] = value
        else:
            part.attributes[name] = value
        token = token[: m.start()] + token[m.end() :]
    while m := _PSEUDO.search(token):
        name, argument = m.group(1), int(m.group(2))
        if name == "nth-child" and argument >= 1:
            part.requirements["nth_child"] = argument
        elif name == "nth-of-type" and argument >= 1:
            part.requirements["nth_of_type"] = argument
        token = token[: m.start()] + token[m.end() :]
    if "." in token:
        tag_part, _, classes = token.partition(".")
        part.classes = [_unescape_class(c) for c in classes.split(".")]
    else:
        tag_part = token
    tag = _TAG.match(tag_part)
    if tag:
        part.requirements["tag_name"] = tag.group(0)
    return part


def parse_selector(selector: str) -> list[SelectorPart]:
    tokens = selector.replace("> * > ", "").replace("> *", "").strip().split(" ")
    parts = []
    for index, token in enumerate(tokens):
        if token in (">", ""):
            continue
        parts.append(_parse_part(token, index > 0 and tokens[index - 1] == ">"))
    return parts


def selector_matches(selector: str, elements: list[dict[str, Any]]) -> bool:
    parts = parse_selector(selector)
    base = len(elements)
    index = 0
    matched = True
    while index < len(parts):
        if base <= 0:
            return False
        part = parts[index]
        candidates = [base - 1] if part.direct_descendant else range(base - 1, -1, -1)
        found = next((i for i in candidates if part.matches(elements[i])), None)
        if found is not None:
            matched = True
            base = found
            index += 1
        else:
            matched = False
            if part.direct_descendant:
                index -= 1
                if index < 0:
                    return False
            else:
                base -= 1
    return matched
