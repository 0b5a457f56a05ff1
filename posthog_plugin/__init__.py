"""The `posthog_plugin` SDK: what a Python plugin imports, and the types of what it is given.

This one file is both the package plugin authors type-check against and the module the sandbox
provides to plugin code (sandbox/guest.py imports it and binds `console` to the plugin's log),
so it imports only the standard library. The exceptions are real classes; everything else is a
type: `PluginEvent` (a TypedDict) and `Meta` with its parts (Protocols), which the sandbox's
implementation (sandbox/meta.py) is checked against.

    from posthog_plugin import Meta, PluginEvent

    def process_event(event: PluginEvent, meta: Meta) -> PluginEvent | None:
        event["properties"]["greeting"] = meta.config.get("greeting", "hello")
        return event
"""

from __future__ import annotations

import sys
from asyncio import Future
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Literal, Protocol, TypedDict

__all__ = [
    "Attachment",
    "Cache",
    "Console",
    "Cursor",
    "Geoip",
    "IllegalOperationError",
    "JobRunner",
    "Jobs",
    "Meta",
    "Metric",
    "Metrics",
    "PluginEvent",
    "Posthog",
    "PosthogApi",
    "Response",
    "RetryError",
    "Storage",
    "TimeUnit",
    "Utils",
    "console",
]


class RetryError(Exception):
    """Raise from `export_events` (or a job) to have the batch retried later with back-off."""


class IllegalOperationError(Exception):
    """A `meta` call the server refuses (an undeclared metric, too many list elements, ...)."""


# The event handed to process_event / on_event / export_events (spec: ingestion §1.4). Keys
# that are not identifiers ($set, $set_once) need the functional form.
PluginEvent = TypedDict(
    "PluginEvent",
    {
        "distinct_id": str,
        "ip": str | None,
        "site_url": str,
        "team_id": int,
        "now": str,
        "sent_at": str | None,
        "event": str,
        "properties": dict[str, Any],
        "timestamp": str,
        "offset": int,
        "uuid": str,
        "$set": dict[str, Any],
        "$set_once": dict[str, Any],
        "elements": list[dict[str, Any]],
    },
    total=False,
)

TimeUnit = Literal[
    "millisecond",
    "milliseconds",
    "second",
    "seconds",
    "minute",
    "minutes",
    "hour",
    "hours",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "quarter",
    "quarters",
    "year",
    "years",
]


class Console(Protocol):
    """Writes to the plugin's log (posthog_pluginlogentry); `print` writes at level LOG."""

    def debug(self, *args: Any) -> None: ...
    def log(self, *args: Any) -> None: ...
    def info(self, *args: Any) -> None: ...
    def warn(self, *args: Any) -> None: ...
    def warning(self, *args: Any) -> None: ...
    def error(self, *args: Any) -> None: ...


class Cache(Protocol):
    """Redis, private to the plugin and team. Every method sends its request at once and returns
    a future: await it for the answer, or leave it (the request still runs)."""

    def set(
        self, key: str, value: Any, ttl_seconds: float | None = None, *, json_serialize: bool = True
    ) -> Future[None]: ...
    def get(self, key: str, default: Any = None, *, json_serialize: bool = True) -> Future[Any]: ...
    def incr(self, key: str) -> Future[int]: ...
    def expire(self, key: str, ttl_seconds: float) -> Future[bool]: ...
    def lpush(self, key: str, elements: str | list[Any]) -> Future[int]: ...
    def lrange(self, key: str, start: int, end: int) -> Future[list[str]]: ...
    def llen(self, key: str) -> Future[int]: ...
    def lrem(self, key: str, count: int, element: str) -> Future[int]: ...
    def lpop(self, key: str, count: int) -> Future[list[str] | None]: ...


class Storage(Protocol):
    """Durable key/value storage of the plugin config (Postgres); values are stored as JSON."""

    def get(self, key: str, default: Any = None) -> Future[Any]: ...
    def set(self, key: str, value: Any) -> Future[None]: ...
    def delete(self, key: str) -> Future[None]: ...


class Cursor(Protocol):
    """A counter shared by every server running the plugin config (Postgres)."""

    def init(self, key: str, initial_value: int | float = 0) -> Future[None]: ...
    def increment(self, key: str, increment_by: int | float = 1) -> Future[int | float]: ...


class Utils(Protocol):
    @property
    def cursor(self) -> Cursor: ...


class Attachment(Protocol):
    """A file uploaded in the plugin config's settings (plugin.json `"type": "attachment"`)."""

    @property
    def content_type(self) -> str: ...
    @property
    def file_name(self) -> str: ...
    @property
    def contents(self) -> bytes: ...


class Metric(Protocol):
    """A metric declared in the plugin's module-level `metrics` dict. Only the operation of its
    declared kind exists on it: `increment` for "sum", `max` for "max", `min` for "min"."""

    increment: Callable[[float], None]
    max: Callable[[float], None]
    min: Callable[[float], None]


class Metrics(Protocol):
    """`meta.metrics["name"]` or `meta.metrics.name`; an undeclared name raises
    IllegalOperationError."""

    def __getitem__(self, name: str) -> Metric: ...
    def __getattr__(self, name: str) -> Metric: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...


class JobRunner(Protocol):
    def run_now(self) -> Future[None]: ...
    def run_in(self, duration: float, unit: str) -> Future[None]: ...
    def run_at(self, when: datetime | float) -> Future[None]: ...


class Jobs(Protocol):
    """`meta.jobs.my_job(payload).run_in(5, "minutes")`: runs the module-level `jobs["my_job"]`
    function later with `(payload, meta)`. Months count as 30 days."""

    def __getitem__(self, name: str) -> Callable[..., JobRunner]: ...
    def __getattr__(self, name: str) -> Callable[..., JobRunner]: ...


class Response(Protocol):
    """What `meta.fetch` and `meta.posthog.api.*` resolve to."""

    @property
    def status(self) -> int: ...
    @property
    def status_text(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def headers(self) -> dict[str, str]: ...  # lower-case names
    @property
    def body(self) -> bytes: ...
    @property
    def ok(self) -> bool: ...
    def text(self) -> str: ...
    def json(self) -> Any: ...


class Geoip(Protocol):
    def locate(self, ip: str) -> Future[dict[str, Any] | None]:
        """The GeoLite2 City record in camelCase (`city.names.en`, `location.latitude`, ...), None
        for an unknown address; fails when the instance has no GeoIP database."""
        ...


class PosthogApi(Protocol):
    """Calls the PostHog API of the instance as the plugin config's team. Options: `data`
    (JSON body), `host`, `project_api_key`, `personal_api_key`."""

    def get(self, path: str, **options: Any) -> Future[Response]: ...
    def post(self, path: str, **options: Any) -> Future[Response]: ...
    def put(self, path: str, **options: Any) -> Future[Response]: ...
    def delete(self, path: str, **options: Any) -> Future[Response]: ...


class Posthog(Protocol):
    @property
    def api(self) -> PosthogApi: ...
    def capture(self, event: str, properties: dict[str, Any] | None = None) -> Future[None]:
        """Sends a new event for the plugin config's team (distinct_id defaults to the plugin)."""
        ...


class Meta(Protocol):
    """The last argument of every plugin function. Also readable as a mapping:
    `meta["config"]`, `meta["global"]`, ... (the keys of `keys()`)."""

    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def attachments(self) -> Mapping[str, Attachment]: ...
    @property
    def global_(self) -> dict[str, Any]:
        """Plain state kept between calls in the sandbox that loaded the config (not shared
        between sandboxes or servers; use cache or storage for that)."""
        ...

    @property
    def cache(self) -> Cache: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def utils(self) -> Utils: ...
    @property
    def geoip(self) -> Geoip: ...
    @property
    def jobs(self) -> Jobs: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def console(self) -> Console: ...
    @property
    def posthog(self) -> Posthog: ...
    @property
    def plugin_config_id(self) -> int: ...
    @property
    def team_id(self) -> int | None: ...
    def fetch(self, url: str, **options: Any) -> Future[Response]:
        """An HTTP request made by the server. Options: `method`, `headers` (dict), `body`
        (str or bytes), `json` (sent as the JSON body), `timeout` (seconds)."""
        ...

    def __getitem__(self, key: str) -> Any: ...
    def keys(self) -> tuple[str, ...]: ...


class _StderrConsole:
    """`console` outside a sandbox (plugin code imported directly, e.g. by a unit test)."""

    def _write(self, level: str, args: tuple[Any, ...]) -> None:
        print(f"[{level}]", *args, file=sys.stderr)

    def debug(self, *args: Any) -> None:
        self._write("DEBUG", args)

    def log(self, *args: Any) -> None:
        self._write("LOG", args)

    def info(self, *args: Any) -> None:
        self._write("INFO", args)

    def warn(self, *args: Any) -> None:
        self._write("WARN", args)

    warning = warn

    def error(self, *args: Any) -> None:
        self._write("ERROR", args)


# Inside a sandbox this is replaced by one writing to the calling plugin config's log.
console: Console = _StderrConsole()
