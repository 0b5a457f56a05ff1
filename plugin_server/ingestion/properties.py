"""Event properties as stored: top-level `$set`/`$set_once` merged in, `$initial_*` and campaign
values derived (spec/ingestion.md §2.3 step 3, §2.6 step 7), and the stored event name (§2.6 step 1)."""

from __future__ import annotations

from typing import Any

from plugin_server.ingestion.js import js_string, json_text, truthy, utf16_cut

EVENT_NAME_LIMIT = 200
CAMPAIGN_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term", "gclid")
INITIAL_KEYS = (
    "$browser",
    "$browser_version",
    "$device_type",
    "$current_url",
    "$os",
    "$referring_domain",
    "$referrer",
)


class InvalidEvent(ValueError):
    """The event cannot be ingested as given. `state`: the event as processing left it, when
    processing had changed it (for the dead-letter record)."""

    state: dict[str, Any] | None = None


def event_properties(data: dict[str, Any]) -> dict[str, Any]:
    """A new dict of the event's properties with top-level `$set`/`$set_once` merged in
    (top-level keys win)."""
    properties = data.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        raise InvalidEvent(f"properties must be an object, got {type(properties).__name__}")
    else:
        properties = dict(properties)
    for key in ("$set", "$set_once"):
        top = data.get(key)
        if truthy(top):
            existing = properties.get(key)
            merged = dict(existing) if isinstance(existing, dict) else {}
            if isinstance(top, dict):
                merged.update(top)
            properties[key] = merged
    return properties


MISSING_NAME = object()  # an event without the key, as opposed to one whose name is null


def sanitize_event_name(name: Any) -> str:
    """Non-strings become their JSON text (null gives "null"); only a missing name is an error."""
    if name is MISSING_NAME:
        raise InvalidEvent("Event name is missing")
    if not isinstance(name, str):
        name = json_text(name) if isinstance(name, dict | list | int | float | bool) else js_string(name)
    return utf16_cut(name, EVENT_NAME_LIMIT)


_INITIAL_NAMES = {key: f"$initial_{key.removeprefix('$')}" for key in (*INITIAL_KEYS, *CAMPAIGN_KEYS)}
_CAMPAIGN = frozenset(CAMPAIGN_KEYS)


def with_initial_and_campaign(properties: dict[str, Any]) -> dict[str, Any]:
    """A copy with campaign values in `$set` and first-touch values in `$set_once` as `$initial_*`,
    in the order the properties came in (as the original builds them)."""
    result = dict(properties)
    found = [key for key in properties if key in _INITIAL_NAMES]
    if not found:
        return result
    campaign = [key for key in found if key in _CAMPAIGN]
    if campaign:
        result["$set"] = {**(properties.get("$set") or {}), **{key: properties[key] for key in campaign}}
    set_once = dict(properties.get("$set_once") or {})
    for key in found:
        set_once[_INITIAL_NAMES[key]] = properties[key]
    result["$set_once"] = set_once
    return result
