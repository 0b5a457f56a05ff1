"""What the export destinations plugins reach through the host (Postgres, S3, BigQuery) share:
the failure type that carries a JS library's error fields, and fetch's address policy for URLs.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import Counter

from plugin_server.metrics import REGISTRY
from plugin_server.services.fetch import address_allowed

DESTINATION_REQUESTS = Counter(
    "plugin_server_plugin_destination_requests_total",
    "Requests plugins made to export destinations through the host, by destination, operation and outcome",
    ["destination", "operation", "outcome"],
    registry=REGISTRY,
)


def count(destination: str, operation: str, ok: bool) -> None:
    DESTINATION_REQUESTS.labels(destination, operation, "ok" if ok else "error").inc()


class DestinationFailure(Exception):
    """A destination's failure as the plugin's JS library reports it: the message, and fields
    (`code`, `statusCode`, ...) the JS error carries."""

    js_name = "Error"  # the JS error class it arrives as

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = {k: v for k, v in fields.items() if v is not None}


def private_url_host(url: str) -> str | None:
    """The host of `url` when it is an address plugins may not reach without
    PLUGIN_FETCH_ALLOW_PRIVATE (an IP literal or `localhost`); names are checked where they
    are resolved (fetch's resolver)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if address_allowed(host) else host
