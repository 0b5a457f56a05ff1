"""The `meta` object handed to Python plugin code, built inside the sandbox from plain data.

Every I/O method sends a request to the host right away and returns an asyncio Future (await it
for the result, or ignore it: it still runs). Console and metrics calls are fire-and-forget.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import posthog_plugin
from posthog_plugin import IllegalOperationError
from posthog_plugin import RetryError as RetryError  # guest.py and the host error classes use it
from sandbox import destinations

Request = Callable[[str, list[Any]], "asyncio.Future[Any]"]
Notify = Callable[[str, list[Any]], None]

METRIC_OPERATIONS = {"sum": "increment", "max": "max", "min": "min"}


def format_console_args(args: tuple[Any, ...]) -> str:
    parts = []
    for arg in args:
        if isinstance(arg, str):
            parts.append(arg)
        elif isinstance(arg, BaseException):
            parts.append(f"{type(arg).__name__}: {arg}")
        elif isinstance(arg, dict | list | tuple):
            try:
                parts.append(json.dumps(arg, separators=(",", ":"), ensure_ascii=False, default=str))
            except (TypeError, ValueError):
                parts.append(str(arg))
        else:
            parts.append(str(arg))
    return " ".join(parts)


def _then(request: asyncio.Future[Any], transform: Callable[[Any], Any]) -> asyncio.Future[Any]:
    """A future of `transform(reply)` for a host request: awaitable like the request itself, and
    cancelled or failed as the request is. A transform that raises fails the future."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(raw: asyncio.Future[Any]) -> None:
        if future.done():
            return
        if raw.cancelled():
            future.cancel()
        elif (error := raw.exception()) is not None:
            future.set_exception(error)
        else:
            try:
                future.set_result(transform(raw.result()))
            except Exception as exc:
                future.set_exception(exc)

    request.add_done_callback(done)
    return future


class Console:
    def __init__(self, notify: Notify) -> None:
        self._notify = notify

    def _write(self, level: str, args: tuple[Any, ...]) -> None:
        self._notify("console", [level, format_console_args(args)])

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


class Cache:
    """Redis, keyed per plugin and team by the host (`@plugin/<plugin_id>/<team_id>/<key>`)."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def set(
        self, key: str, value: Any, ttl_seconds: float | None = None, *, json_serialize: bool = True
    ) -> asyncio.Future[Any]:
        if json_serialize:
            value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        elif not isinstance(value, str):
            raise TypeError("cache.set expects a string value when json_serialize is False")
        return self._request("cache.set", [key, value, ttl_seconds or None])

    def get(self, key: str, default: Any = None, *, json_serialize: bool = True) -> asyncio.Future[Any]:
        def value_of(value: Any) -> Any:
            if value is None:
                return default
            if not json_serialize:
                return value
            try:
                return json.loads(value) if value != "" else None
            except ValueError:
                return None

        return _then(self._request("cache.get", [key]), value_of)

    def incr(self, key: str) -> asyncio.Future[Any]:
        return self._request("cache.incr", [key])

    def expire(self, key: str, ttl_seconds: float) -> asyncio.Future[Any]:
        return self._request("cache.expire", [key, ttl_seconds])

    def lpush(self, key: str, elements: str | list[Any]) -> asyncio.Future[Any]:
        if isinstance(elements, str):
            items = [elements]
        elif isinstance(elements, list | tuple):
            if len(elements) > 1000:
                raise IllegalOperationError("Too many elements in array for cache.lpush. Maximum: 1000")
            items = [str(e) for e in elements]
        else:
            raise TypeError("cache.lpush expects a string value or an array of strings")
        return self._request("cache.lpush", [key, items])

    def lrange(self, key: str, start: int, end: int) -> asyncio.Future[Any]:
        if not _is_number(start) or not _is_number(end):
            raise TypeError("cache.lrange expects a number for the start and end indexes")
        return self._request("cache.lrange", [key, int(start), int(end)])

    def llen(self, key: str) -> asyncio.Future[Any]:
        return self._request("cache.llen", [key])

    def lrem(self, key: str, count: int, element: str) -> asyncio.Future[Any]:
        if not _is_number(count):
            raise TypeError('cache.lrem expects a number for the "count" argument')
        return self._request("cache.lrem", [key, int(count), str(element)])

    def lpop(self, key: str, count: int) -> asyncio.Future[Any]:
        if not _is_number(count):
            raise TypeError('cache.lpop expects a number for the "count" argument')
        return self._request("cache.lpop", [key, int(count)])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Storage:
    """posthog_pluginstorage rows of this plugin config; values are JSON text."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def get(self, key: str, default: Any = None) -> asyncio.Future[Any]:
        def value_of(reply: Any) -> Any:
            found, text = reply
            return json.loads(text) if found and text is not None else default

        return _then(self._request("storage.get", [key]), value_of)

    def set(self, key: str, value: Any) -> asyncio.Future[Any]:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
        return self._request("storage.set", [key, text])

    def delete(self, key: str) -> asyncio.Future[Any]:
        return self._request("storage.delete", [key])


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class Cursor:
    def __init__(self, request: Request) -> None:
        self._request = request

    def init(self, key: str, initial_value: int | float = 0) -> asyncio.Future[Any]:
        if not initial_value:
            initial_value = 0
        if not _is_number(initial_value):
            raise TypeError("The cursor's initial value must be a number!")
        return self._request("cursor.init", [key, initial_value])

    def increment(self, key: str, increment_by: int | float = 1) -> asyncio.Future[Any]:
        if not _is_number(increment_by):
            raise TypeError("The incrementBy value must be a number!")
        return self._request("cursor.increment", [key, increment_by])


@dataclass(frozen=True, slots=True)
class Utils:
    cursor: Cursor


@dataclass(frozen=True, slots=True)
class Attachment:
    content_type: str
    file_name: str
    contents: bytes

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class Metric:
    # only the operation of the declared kind is set (in __init__)
    increment: Callable[[Any], None]
    max: Callable[[Any], None]
    min: Callable[[Any], None]

    def __init__(self, name: str, kind: str, notify: Notify) -> None:
        self._name = name
        self._notify = notify
        setattr(self, METRIC_OPERATIONS[kind], self._operation(kind))

    def _operation(self, kind: str) -> Callable[[Any], None]:
        def apply(value: Any) -> None:
            if not _is_number(value):
                raise IllegalOperationError("Only numbers are allowed for operations on metrics")
            self._notify("metrics.update", [self._name, kind, value])

        return apply


class Metrics(Mapping[str, Metric]):
    def __init__(self, declared: dict[str, str], notify: Notify) -> None:
        self._metrics = {name: Metric(name, kind, notify) for name, kind in declared.items()}

    def __getitem__(self, name: str) -> Metric:
        try:
            return self._metrics[name]
        except KeyError:
            raise IllegalOperationError("Invalid metric name") from None

    def __getattr__(self, name: str) -> Metric:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._metrics)

    def __len__(self) -> int:
        return len(self._metrics)


class JobRunner:
    def __init__(self, name: str, payload: Any, request: Request) -> None:
        self._name, self._payload, self._request = name, payload, request

    def _enqueue(self, run_at_ms: float) -> asyncio.Future[Any]:
        return self._request("jobs.enqueue", [self._name, self._payload, run_at_ms])

    def run_now(self) -> asyncio.Future[Any]:
        return self._enqueue(datetime.now(UTC).timestamp() * 1000)

    def run_in(self, duration: float, unit: str) -> asyncio.Future[Any]:
        return self._enqueue(datetime.now(UTC).timestamp() * 1000 + duration * unit_milliseconds(unit))

    def run_at(self, when: datetime | float) -> asyncio.Future[Any]:
        if isinstance(when, datetime):
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return self._enqueue(when.timestamp() * 1000)
        return self._enqueue(float(when))


_UNIT_MS = {
    "milliseconds": 1,
    "seconds": 1000,
    "minutes": 60_000,
    "hours": 3_600_000,
    "days": 86_400_000,
    "weeks": 7 * 86_400_000,
    "months": 30 * 86_400_000,  # 30 days for Python plugins (the JS runtime keeps 30 weeks)
    "quarters": 13 * 7 * 86_400_000,
    "years": 365 * 86_400_000,
}


def unit_milliseconds(unit: str) -> int:
    normalized = unit if unit.endswith("s") else unit + "s"
    if normalized not in _UNIT_MS:
        raise ValueError(f"Unknown time unit: {normalized}")
    return _UNIT_MS[normalized]


class Jobs:
    def __init__(self, request: Request) -> None:
        self._request = request

    def __getitem__(self, name: str) -> Callable[..., JobRunner]:
        return lambda payload=None: JobRunner(name, payload, self._request)

    def __getattr__(self, name: str) -> Callable[..., JobRunner]:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]


@dataclass(frozen=True, slots=True)
class Response:
    """What `meta.fetch` and `meta.posthog.api.*` resolve to."""

    status: int
    status_text: str
    url: str
    headers: dict[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def _response(plain: Any) -> Response:
    status, status_text, url, headers, body = plain
    if isinstance(body, str):
        body = body.encode()
    return Response(
        int(status),
        str(status_text),
        str(url),
        {str(k).lower(): str(v) for k, v in dict(headers).items()},
        body or b"",
    )


class Geoip:
    def __init__(self, request: Request) -> None:
        self._request = request

    def locate(self, ip: str) -> asyncio.Future[Any]:
        return self._request("geoip.locate", [ip])


class PosthogApi:
    def __init__(self, request: Request) -> None:
        self._request = request

    def _call(self, method: str, path: str, **options: Any) -> asyncio.Future[Any]:
        return _then(self._request("posthog.api", [method, path, options]), _response)

    def get(self, path: str, **options: Any) -> asyncio.Future[Any]:
        return self._call("GET", path, **options)

    def post(self, path: str, **options: Any) -> asyncio.Future[Any]:
        return self._call("POST", path, **options)

    def put(self, path: str, **options: Any) -> asyncio.Future[Any]:
        return self._call("PUT", path, **options)

    def delete(self, path: str, **options: Any) -> asyncio.Future[Any]:
        return self._call("DELETE", path, **options)


class Posthog:
    def __init__(self, request: Request) -> None:
        self._request = request
        self.api = PosthogApi(request)

    def capture(self, event: str, properties: dict[str, Any] | None = None) -> asyncio.Future[Any]:
        return self._request("posthog.capture", [event, properties or {}])


class Meta:
    """Passed as the last argument to every plugin function."""

    KEYS = ("cache", "config", "attachments", "global", "jobs", "metrics", "storage", "geoip", "utils")

    def __init__(
        self, spec: dict[str, Any], declared_metrics: dict[str, str], request: Request, notify: Notify
    ):
        self.config: dict[str, Any] = spec.get("config") or {}
        self.attachments: dict[str, Attachment] = {
            key: Attachment(a["content_type"], a["file_name"], a["contents"])
            for key, a in (spec.get("attachments") or {}).items()
        }
        self.global_: dict[str, Any] = {}
        self.cache = Cache(request)
        self.storage = Storage(request)
        self.utils = Utils(Cursor(request))
        self.geoip = Geoip(request)
        self.jobs = Jobs(request)
        self.metrics = Metrics(declared_metrics, notify)
        self.console = Console(notify)
        self.posthog = Posthog(request)
        self.postgres = destinations.Postgres(request)
        self.s3 = destinations.S3(request)
        self.bigquery = destinations.BigQuery(request)
        self._request = request
        self.plugin_config_id: int = spec["plugin_config_id"]
        self.team_id: int | None = spec.get("team_id")

    def fetch(self, url: str, **options: Any) -> asyncio.Future[Any]:
        return _then(self._request("fetch", [url, options]), _response)

    def __getitem__(self, key: str) -> Any:
        if key == "global":
            return self.global_
        if key in self.KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def keys(self) -> tuple[str, ...]:
        return self.KEYS


if TYPE_CHECKING:
    # mypy holds this implementation to the SDK's types (posthog_plugin), so they cannot drift.
    def _conforms(meta: Meta, response: Response, attachment: Attachment) -> None:
        _meta: posthog_plugin.Meta = meta
        _response: posthog_plugin.Response = response
        _attachment: posthog_plugin.Attachment = attachment
