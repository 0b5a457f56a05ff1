"""Replaces the configured personal properties with HMAC-SHA256(salt, value), hex-encoded.

The same value always gives the same hash (for one salt), so events can still be counted and
joined per person, while the value itself is never stored. A keyed hash (not a plain one) keeps
short values such as phone numbers from being recovered by hashing every candidate."""

import hashlib
import hmac
from typing import Any

from posthog_plugin import Meta, PluginEvent

MIN_SALT_LENGTH = 16


def setup_plugin(meta: Meta) -> None:
    salt = meta.config.get("salt") or ""
    if len(salt) < MIN_SALT_LENGTH:
        # failing setup keeps the plugin from running with a guessable key
        raise ValueError(f"The salt must be at least {MIN_SALT_LENGTH} characters long")
    meta.global_["key"] = salt.encode()
    names = meta.config.get("properties") or ""
    meta.global_["names"] = [name.strip() for name in names.split(",") if name.strip()]
    meta.global_["hash_distinct_id"] = meta.config.get("hash_distinct_id") == "yes"


def pseudonym(key: bytes, value: Any) -> str:
    return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()


def _hash_in(container: Any, names: list[str], key: bytes) -> None:
    if not isinstance(container, dict):
        return
    for name in names:
        if container.get(name) is not None:
            container[name] = pseudonym(key, container[name])


def process_event(event: PluginEvent, meta: Meta) -> PluginEvent:
    key: bytes = meta.global_["key"]
    names: list[str] = meta.global_["names"]
    properties = event.get("properties") or {}
    for container in (properties, properties.get("$set"), properties.get("$set_once")):
        _hash_in(container, names, key)
    _hash_in(event.get("$set"), names, key)
    _hash_in(event.get("$set_once"), names, key)
    if meta.global_["hash_distinct_id"] and "distinct_id" in event:
        event["distinct_id"] = pseudonym(key, event["distinct_id"])
    return event
