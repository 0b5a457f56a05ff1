"""Celery task messages as kombu's Redis transport stores them: parsing and encoding.

The PostHog app (Django + Celery) LPUSHes one JSON envelope per task onto the list
PLUGINS_CELERY_QUEUE; the body is base64 of UTF-8 JSON, in task protocol 1 or 2. This module turns
such an element into an `IncomingEvent` or a plugin job, and builds the same envelopes for
producers (a plugin's `posthog.capture`, tests, benchmarks).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from plugin_server.ingestion.js import js_float, js_string
from plugin_server.ingestion.types import IncomingEvent
from plugin_server.ingestion.uuidt import uuidt

PROCESS_EVENT_TASK = "posthog.tasks.process_event.process_event_with_plugins"
PLUGIN_JOB_TASK = "posthog.tasks.plugins.plugin_job"

_json_decode = msgspec.json.Decoder(float_hook=js_float).decode


class CeleryMessageError(ValueError):
    """A queue element that cannot be turned into a task, event or job.

    `reason` is a short stable code (used as a metric label); `task` and `team_id` are filled in
    when they were readable, so a dead-letter record can say whose message it was.
    """

    def __init__(self, reason: str, message: str, *, task: str | None = None, team_id: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.task = task
        self.team_id = team_id


@dataclass(slots=True)  # not frozen: a frozen dataclass takes three times as long to build
class CeleryTask:
    """A decoded task: its name, id, positional arguments and keyword arguments."""

    name: str
    id: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    protocol: int


# ---------------------------------------------------------------------------------------------- parsing


def message_id(raw: bytes | str) -> bytes:
    """What identifies a queue element across deliveries: 16 bytes of SHA-256 of it. Every element
    Celery writes carries its own task id and delivery tag, so equal bytes mean the same message."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).digest()[:16]


def _short(value: Any) -> str:
    try:
        return repr(value)[:100]
    except ValueError:  # an integer too long to print
        return f"a {type(value).__name__} too long to print"


def _loads(data: bytes | str, what: str) -> Any:
    try:
        return _json_decode(data)
    except msgspec.DecodeError:
        # msgspec refuses what Python's json (and so kombu) can write: NaN/Infinity, lone
        # surrogate escapes, numbers beyond float range. Only then take the slow path.
        try:
            return json.loads(data, parse_float=js_float)
        except (ValueError, RecursionError) as exc:
            raise CeleryMessageError("not_json", f"{what} is not valid JSON: {exc}") from None


class _Headers(msgspec.Struct):
    task: Any = None
    id: Any = None


class _Properties(msgspec.Struct):
    body_encoding: Any = None


class _Envelope(msgspec.Struct):
    """The envelope keys this service reads; the rest (e.g. Celery's `argsrepr`) is skipped unread."""

    body: Any = None
    content_type: Any = msgspec.field(default=None, name="content-type")
    content_encoding: Any = msgspec.field(default=None, name="content-encoding")
    headers: _Headers | None = None
    properties: _Properties | None = None


_envelope_decode = msgspec.json.Decoder(_Envelope).decode


def _read_envelope(raw: bytes | str) -> _Envelope:
    try:
        return _envelope_decode(raw)
    except msgspec.DecodeError:
        pass  # odd but possibly valid input: decode it loosely and say precisely what is wrong
    envelope = _loads(raw, "queue element")
    if not isinstance(envelope, dict):
        raise CeleryMessageError(
            "bad_envelope", f"queue element is a JSON {type(envelope).__name__}, not an object"
        )
    headers, properties = envelope.get("headers"), envelope.get("properties")
    return _Envelope(
        body=envelope.get("body"),
        content_type=envelope.get("content-type"),
        content_encoding=envelope.get("content-encoding"),
        headers=_Headers(headers.get("task"), headers.get("id")) if isinstance(headers, dict) else None,
        properties=_Properties(properties.get("body_encoding")) if isinstance(properties, dict) else None,
    )


def parse_celery_message(raw: bytes | str) -> CeleryTask:
    """Decode one Redis list element into a task. Raises `CeleryMessageError`."""
    envelope = _read_envelope(raw)
    if envelope.content_type != "application/json":
        raise CeleryMessageError(
            "unsupported_content_type", f"unsupported content type {_short(envelope.content_type)}"
        )
    properties = envelope.properties
    if properties is None:
        raise CeleryMessageError("bad_envelope", "queue element has no properties object")
    if properties.body_encoding != "base64":
        raise CeleryMessageError(
            "unsupported_body_encoding", f"unsupported body encoding {_short(properties.body_encoding)}"
        )
    if envelope.content_encoding != "utf-8":
        raise CeleryMessageError(
            "unsupported_content_encoding",
            f"unsupported content encoding {_short(envelope.content_encoding)}",
        )
    headers = envelope.headers
    if headers is None:
        raise CeleryMessageError("bad_envelope", "queue element has no headers object")
    body_b64 = envelope.body
    if not isinstance(body_b64, str):
        raise CeleryMessageError("bad_envelope", "queue element has no body string")
    try:
        body_bytes = binascii.a2b_base64(body_b64, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise CeleryMessageError("bad_base64", f"body is not valid base64: {exc}") from None
    try:
        body_text = body_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CeleryMessageError("bad_body", f"body is not UTF-8: {exc}") from None
    body = _loads(body_text, "body")

    name = headers.task
    if name:  # protocol 2: the name is in the headers, the body is [args, kwargs, embed]
        if not isinstance(name, str):
            raise CeleryMessageError("bad_envelope", f"task header is not a string: {_short(name)}")
        if not isinstance(body, list) or len(body) < 2:
            raise CeleryMessageError(
                "bad_body", "protocol 2 body is not an [args, kwargs, embed] array", task=name
            )
        args, kwargs = body[0], body[1]
        task_id = headers.id
        protocol = 2
    else:  # protocol 1: everything is in the body object
        if not isinstance(body, dict):
            raise CeleryMessageError("bad_body", "protocol 1 body is not an object")
        name = body.get("task")
        if not isinstance(name, str) or not name:
            raise CeleryMessageError("bad_body", "protocol 1 body names no task")
        args = body.get("args") or []
        kwargs = body.get("kwargs") or {}
        task_id = body.get("id")
        protocol = 1
    if not isinstance(args, list):
        raise CeleryMessageError("bad_body", "task args is not an array", task=name)
    if not isinstance(kwargs, dict):
        raise CeleryMessageError("bad_body", "task kwargs is not an object", task=name)
    return CeleryTask(name, task_id if isinstance(task_id, str) else None, args, kwargs, protocol)


# posthog_team.id is a Postgres integer: a team id beyond it names no team.
_TEAM_IDS = range(-(2**31), 2**31)


def _team_id(value: Any, task: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CeleryMessageError(
            "bad_arguments", f"team_id argument is not an integer: {_short(value)}", task=task
        )
    if value not in _TEAM_IDS:
        raise CeleryMessageError(
            "bad_arguments", f"team_id argument is out of range: {_short(value)}", task=task
        )
    return value


def event_from_task(task: CeleryTask, raw: bytes | str) -> IncomingEvent:
    """Assemble the PluginEvent of a `process_event_with_plugins` task (spec/ingestion.md §1.1.5).

    Keys of the SDK payload override the envelope's (as in the original), except `team_id`: the
    team is the one the capture endpoint authenticated, never one named inside the payload.
    """
    if task.name != PROCESS_EVENT_TASK:
        raise CeleryMessageError(
            "unknown_task", f"Missing process handler for task {task.name}", task=task.name
        )
    args = task.args
    if len(args) < 6:
        raise CeleryMessageError(
            "bad_arguments", f"{PROCESS_EVENT_TASK} needs 7 arguments, got {len(args)}", task=task.name
        )
    team_id = _team_id(args[4], task.name)
    data = args[3]
    if not isinstance(data, dict):
        raise CeleryMessageError(
            "bad_arguments",
            f"event data argument is not an object: {type(data).__name__}",
            task=task.name,
            team_id=team_id,
        )
    # Six arguments: sent_at travelled as a keyword (the original would have bound the kwargs object).
    sent_at = args[6] if len(args) > 6 else task.kwargs.get("sent_at")
    event: dict[str, Any] = {
        "distinct_id": args[0],
        "ip": args[1],
        "site_url": args[2],
        "team_id": team_id,
        "now": args[5],
        "sent_at": sent_at,
    }
    if "uuid" not in data:
        event["uuid"] = uuidt()
    event.update(data)
    event["team_id"] = team_id
    distinct_id = event.get("distinct_id")
    if distinct_id is None:
        # the original's event lost a null id on its way to the pipeline, which then reads
        # "undefined" (spec 5.2 #5), as on the Kafka path
        event.pop("distinct_id", None)
    elif type(distinct_id) is not str:
        event["distinct_id"] = js_string(distinct_id)
    return IncomingEvent(team_id=team_id, event=event, raw=raw, source="celery", message_id=message_id(raw))


def job_from_task(task: CeleryTask, now_ms: int | None = None) -> dict[str, Any]:
    """The plugin job a `posthog.tasks.plugins.plugin_job` task asks for (spec/services.md §5.1)."""
    if task.name != PLUGIN_JOB_TASK:
        raise CeleryMessageError(
            "unknown_task", f"Missing process handler for task {task.name}", task=task.name
        )
    if len(task.args) < 5:
        raise CeleryMessageError(
            "bad_arguments", f"{PLUGIN_JOB_TASK} needs 5 arguments, got {len(task.args)}", task=task.name
        )
    team, config_id, job_type, operation, payload = task.args[:5]
    team_id = _team_id(team, task.name)
    if isinstance(config_id, bool) or not isinstance(config_id, int):
        raise CeleryMessageError(
            "bad_arguments",
            f"plugin config id is not an integer: {_short(config_id)}",
            task=task.name,
            team_id=team_id,
        )
    if not isinstance(job_type, str) or not isinstance(payload, dict):
        raise CeleryMessageError(
            "bad_arguments",
            "plugin job needs a type string and a payload object",
            task=task.name,
            team_id=team_id,
        )
    return {
        "type": job_type,
        "payload": {**payload, "$operation": operation},
        "pluginConfigId": config_id,
        "pluginConfigTeam": team_id,
        "timestamp": int(time.time() * 1000) if now_ms is None else now_ms,
    }


# --------------------------------------------------------------------------------------------- encoding


def _kombu_json(value: Any) -> str:
    """JSON as kombu writes it: Python's json.dumps defaults, datetimes in ISO with `Z` for UTC."""
    return json.dumps(value, default=_kombu_default)


def _kombu_default(value: Any) -> Any:
    if isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _node_json(value: Any) -> str:
    """JSON as Node's JSON.stringify writes it: compact, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_kombu_default)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _origin() -> str:
    return f"gen{os.getpid()}@{socket.gethostname()}"


def encode_task_message(
    task: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue: str,
    task_id: str | None = None,
    protocol: int = 2,
) -> str:
    """A queue element as Celery 4 (Python) with kombu's Redis transport writes it."""
    task_id = task_id or str(uuid.uuid4())
    kwargs = dict(kwargs or {})
    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": str(uuid.uuid4()),
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    headers: dict[str, Any]
    if protocol == 2:
        headers = {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(list(args))[:1024],
            "kwargsrepr": repr(kwargs)[:1024],
            "origin": _origin(),
        }
        body: Any = [list(args), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    elif protocol == 1:
        headers = {}
        body = {
            "task": task,
            "id": task_id,
            "args": list(args),
            "kwargs": kwargs,
            "retries": 0,
            "eta": None,
            "expires": None,
            "utc": True,
            "callbacks": None,
            "errbacks": None,
            "timelimit": [None, None],
            "taskset": None,
            "chord": None,
        }
    else:
        raise ValueError(f"unknown Celery task protocol {protocol}")
    envelope = {
        "body": _b64(_kombu_json(body)),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }
    return _kombu_json(envelope)


def encode_celery_event(
    distinct_id: str,
    ip: str | None,
    site_url: str,
    data: Mapping[str, Any],
    team_id: int,
    now: datetime | str,
    sent_at: datetime | str | None,
    *,
    queue: str,
    task_id: str | None = None,
    protocol: int = 2,
) -> str:
    """What Django's capture endpoint pushes for one event (spec/ingestion.md §1.1.4)."""
    args = [
        str(distinct_id)[:200],
        ip,
        site_url,
        dict(data),
        team_id,
        now.isoformat() if isinstance(now, datetime) else now,
        sent_at,  # a datetime here is written by kombu's encoder, with `Z` for UTC
    ]
    return encode_task_message(PROCESS_EVENT_TASK, args, {}, queue=queue, task_id=task_id, protocol=protocol)


def encode_plugin_capture(
    data: Mapping[str, Any],
    team_id: int,
    timestamp: str,
    *,
    queue: str,
    task_id: str | None = None,
) -> str:
    """The element a plugin's `posthog.capture` pushes in Postgres mode (spec/ingestion.md §1.3).

    `data` is the assembled event (`distinct_id`, `event`, `timestamp`, `properties`, `team_id`,
    `uuid`); `timestamp` fills both `now` and `sent_at`, as in the original.
    """
    task_id = task_id or str(uuid.uuid4())
    body = [[data.get("distinct_id"), None, None, dict(data), team_id, timestamp, timestamp], {}, {}]
    envelope = {
        "body": _b64(_node_json(body)),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"lang": "js", "task": PROCESS_EVENT_TASK, "id": task_id},
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue},
            "delivery_mode": 2,
            "delivery_tag": str(uuid.uuid4()),
            "correlationId": task_id,
            "replyTo": "",
        },
    }
    return _node_json(envelope)
