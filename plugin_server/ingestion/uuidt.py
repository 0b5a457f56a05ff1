"""UUIDTs for ingestion: new ones (`plugin_server.uuidt`) and the check an event's uuid must pass."""

from __future__ import annotations

import re

from plugin_server.uuidt import uuidt

__all__ = ["is_valid_uuid", "uuidt"]

_UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


def is_valid_uuid(value: object) -> bool:
    """8-4-4-4-12 hexadecimal groups, any case, no version check (what the pipeline accepts)."""
    return isinstance(value, str) and _UUID_PATTERN.match(value) is not None
