"""Parsing and encoding of Celery task messages (spec/ingestion.md §1.1, spec/services.md §8.3)."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from plugin_server.queues.celery_format import (
    PLUGIN_JOB_TASK,
    PROCESS_EVENT_TASK,
    CeleryMessageError,
    encode_celery_event,
    encode_plugin_capture,
    encode_task_message,
    event_from_task,
    job_from_task,
    parse_celery_message,
)

QUEUE = "posthog-plugins"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DATA = {
    "event": "$pageview",
    "properties": {"$current_url": "https://example.com/", "$lib": "web", "emoji": "🦔 ünïcode"},
    "timestamp": "2021-10-28T12:00:00.000Z",
}
NOW = "2021-10-28T12:00:01.123456+00:00"
SENT_AT = datetime(2021, 10, 28, 12, 0, 0, 500000, tzinfo=UTC)


def decode(raw: bytes | str) -> Any:
    return parse_celery_message(raw)


def django_event(**changes: Any) -> str:
    values: dict[str, Any] = {
        "distinct_id": "user-1",
        "ip": "127.0.0.1",
        "site_url": "https://app.posthog.com",
        "data": DATA,
        "team_id": 2,
        "now": NOW,
        "sent_at": SENT_AT,
    }
    values.update(changes)
    return encode_celery_event(**values, queue=QUEUE)


def envelope_with(body_value: Any, **changes: Any) -> str:
    """An envelope around `body_value`; `changes` replace envelope keys (content-type via **{...})."""
    envelope: dict[str, Any] = {
        "body": base64.b64encode(json.dumps(body_value).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": PROCESS_EVENT_TASK, "id": "t1"},
        "properties": {"body_encoding": "base64"},
    }
    envelope.update(changes)
    return json.dumps(envelope)


# ------------------------------------------------------------------------------------ Django's format


def test_django_envelope_has_kombu_shape_and_base64_json_body() -> None:
    envelope = json.loads(django_event())
    assert list(envelope) == ["body", "content-encoding", "content-type", "headers", "properties"]
    assert envelope["headers"]["lang"] == "py"
    assert envelope["headers"]["task"] == PROCESS_EVENT_TASK
    assert envelope["headers"]["root_id"] == envelope["headers"]["id"]
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": QUEUE}
    assert envelope["properties"]["body_encoding"] == "base64"
    body_text = base64.b64decode(envelope["body"]).decode()
    assert body_text.isascii()  # kombu's json.dumps escapes non-ASCII
    args, kwargs, embed = json.loads(body_text)
    assert args == [
        "user-1",
        "127.0.0.1",
        "https://app.posthog.com",
        DATA,
        2,
        NOW,
        "2021-10-28T12:00:00.500000Z",
    ]
    assert kwargs == {}
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@pytest.mark.parametrize("raw_type", [str, bytes])
def test_protocol_2_event_assembly(raw_type: type) -> None:
    text = django_event()
    raw = text.encode() if raw_type is bytes else text
    task = parse_celery_message(raw)
    assert task.protocol == 2 and task.name == PROCESS_EVENT_TASK
    incoming = event_from_task(task, raw)
    event = incoming.event
    assert incoming.team_id == 2 and incoming.source == "celery" and incoming.raw == raw
    assert event["distinct_id"] == "user-1"
    assert event["ip"] == "127.0.0.1"
    assert event["site_url"] == "https://app.posthog.com"
    assert event["team_id"] == 2
    assert event["now"] == NOW
    assert event["sent_at"] == "2021-10-28T12:00:00.500000Z"
    assert event["event"] == "$pageview"
    assert event["properties"] == DATA["properties"]
    assert event["timestamp"] == DATA["timestamp"]
    assert UUID_RE.match(event["uuid"])


def test_protocol_1_event_assembly() -> None:
    raw = encode_celery_event("user-1", None, "https://x.io", DATA, 7, NOW, None, queue=QUEUE, protocol=1)
    envelope = json.loads(raw)
    assert envelope["headers"] == {}
    task = parse_celery_message(raw)
    assert task.protocol == 1
    event = event_from_task(task, raw).event
    assert event["team_id"] == 7 and event["ip"] is None and event["sent_at"] is None
    assert event["event"] == "$pageview"


def test_protocol_1_args_and_kwargs_default_to_empty() -> None:
    body = {"task": PLUGIN_JOB_TASK, "id": "x"}
    task = parse_celery_message(envelope_with(body, headers={}))
    assert task.args == [] and task.kwargs == {} and task.name == PLUGIN_JOB_TASK


def test_each_event_gets_its_own_uuidt() -> None:
    raw = django_event()
    first = event_from_task(parse_celery_message(raw), raw).event["uuid"]
    second = event_from_task(parse_celery_message(raw), raw).event["uuid"]
    assert first != second
    # UUIDT: the first 12 hex digits are the Unix time in ms
    ms = int(first.replace("-", "")[:12], 16)
    assert abs(ms / 1000 - datetime.now(UTC).timestamp()) < 60


def test_5_2_03_payload_keys_override_envelope_but_not_team_id() -> None:
    data = {
        **DATA,
        "uuid": "017cc6a1-4f2b-0000-8c3e-6b1f2a9d7e01",
        "team_id": 999,
        "distinct_id": "from-data",
        "ip": "10.0.0.1",
        "site_url": "https://other",
        "now": "2020-01-01T00:00:00Z",
        "sent_at": None,
        "type": "capture",
    }
    raw = django_event(data=data)
    incoming = event_from_task(parse_celery_message(raw), raw)
    event = incoming.event
    assert event["uuid"] == "017cc6a1-4f2b-0000-8c3e-6b1f2a9d7e01"
    assert event["distinct_id"] == "from-data"
    assert event["ip"] == "10.0.0.1" and event["site_url"] == "https://other"
    assert event["now"] == "2020-01-01T00:00:00Z" and event["sent_at"] is None
    assert event["type"] == "capture"  # unknown top-level keys travel along
    # Deviation from the original: the authenticated team wins over a team_id in the payload.
    assert event["team_id"] == 2 and incoming.team_id == 2


def test_1_1_4_recommendation_six_args_take_sent_at_from_kwargs() -> None:
    args = ["u", None, "https://x", DATA, 2, NOW]
    raw = encode_task_message(PROCESS_EVENT_TASK, args, {"sent_at": "2021-10-28T12:00:00Z"}, queue=QUEUE)
    event = event_from_task(parse_celery_message(raw), raw).event
    assert event["sent_at"] == "2021-10-28T12:00:00Z"
    raw = encode_task_message(PROCESS_EVENT_TASK, args, {}, queue=QUEUE)
    assert event_from_task(parse_celery_message(raw), raw).event["sent_at"] is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2.0, "2"),
        (2, "2"),
        (True, "true"),
        ({"a": 1}, "[object Object]"),
        ([1, None, "x"], "1,,x"),
        (1e21, "1e+21"),
    ],
)
def test_5_2_05_non_string_distinct_id_becomes_js_string(value: Any, expected: str) -> None:
    raw = django_event(data={**DATA, "distinct_id": value})
    assert event_from_task(parse_celery_message(raw), raw).event["distinct_id"] == expected


def test_5_2_05_null_distinct_id_is_left_out_so_the_pipeline_reads_undefined() -> None:
    """`distinct_id?.toString()` in the original makes a null id undefined (seen: it stores the
    event and person as "undefined")."""
    raw = django_event(data={**DATA, "distinct_id": None})
    assert "distinct_id" not in event_from_task(parse_celery_message(raw), raw).event


def test_plugin_capture_envelope_matches_the_originals_and_parses() -> None:
    data = {
        "distinct_id": "plugin-name",
        "event": "custom event",
        "timestamp": "2021-10-28T12:00:00.000Z",
        "properties": {"$lib": "posthog-plugin-server", "name": "haha"},
        "team_id": 2,
        "uuid": "017cc6a1-4f2b-0000-8c3e-6b1f2a9d7e01",
    }
    raw = encode_plugin_capture(data, 2, "2021-10-28T12:00:00.000Z", queue=QUEUE, task_id="tid")
    envelope = json.loads(raw)
    assert envelope["headers"] == {"lang": "js", "task": PROCESS_EVENT_TASK, "id": "tid"}
    props = envelope["properties"]
    assert props["correlationId"] == "tid" and props["replyTo"] == ""
    assert props["delivery_info"] == {"exchange": "", "routing_key": QUEUE} and props["delivery_mode"] == 2
    body = json.loads(base64.b64decode(envelope["body"]))
    assert body == [["plugin-name", None, None, data, 2, data["timestamp"], data["timestamp"]], {}, {}]
    event = event_from_task(parse_celery_message(raw), raw).event
    assert event["uuid"] == data["uuid"] and event["now"] == event["sent_at"] == data["timestamp"]
    assert event["ip"] is None and event["site_url"] is None and event["event"] == "custom event"


def test_values_python_json_allows_but_strict_json_does_not_still_parse() -> None:
    # Django's json.loads accepts NaN and lone surrogates from an SDK, and json.dumps writes them back.
    data = {"event": "e", "properties": {"nan": float("nan"), "big": 10**30, "s": "\ud800"}}
    raw = django_event(data=data)
    event = event_from_task(parse_celery_message(raw), raw).event
    assert event["properties"]["big"] == 10**30
    assert event["properties"]["s"] == "\ud800"
    assert event["properties"]["nan"] != event["properties"]["nan"]


def test_plugin_job_task_becomes_a_job() -> None:
    raw = encode_task_message(PLUGIN_JOB_TASK, [2, 39, "someJobName", "start", {"a": 1}], {}, queue=QUEUE)
    job = job_from_task(parse_celery_message(raw), now_ms=1234)
    assert job == {
        "type": "someJobName",
        "payload": {"a": 1, "$operation": "start"},
        "pluginConfigId": 39,
        "pluginConfigTeam": 2,
        "timestamp": 1234,
    }


# ------------------------------------------------------------------------------------------ bad input


def _envelope_dict(raw: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(raw)
    return result


BAD_MESSAGES: dict[str, tuple[str, str | bytes]] = {
    "not json": ("not_json", "{not json"),
    "json array": ("bad_envelope", "[1, 2]"),
    "bytes not utf-8 json": ("not_json", b"\xff\xfe{"),
    "content type": (
        "unsupported_content_type",
        envelope_with([[], {}, {}], **{"content-type": "application/x-python"}),
    ),
    "content encoding": (
        "unsupported_content_encoding",
        envelope_with([[], {}, {}], **{"content-encoding": "binary"}),
    ),
    "body encoding": (
        "unsupported_body_encoding",
        envelope_with([[], {}, {}], properties={"body_encoding": "hex"}),
    ),
    "no properties": ("bad_envelope", envelope_with([[], {}, {}], properties=None)),
    "no headers": ("bad_envelope", envelope_with([[], {}, {}], headers=None)),
    "no body": ("bad_envelope", envelope_with([[], {}, {}], body=None)),
    "bad base64": ("bad_base64", envelope_with([[], {}, {}], body="***not base64***")),
    "body not utf-8": ("bad_body", envelope_with([[], {}, {}], body=base64.b64encode(b"\xff\xfe").decode())),
    "body not json": ("not_json", envelope_with([[], {}, {}], body=base64.b64encode(b"[1,").decode())),
    "protocol 2 object body": ("bad_body", envelope_with({"args": [], "kwargs": {}})),
    "protocol 1 list body": ("bad_body", envelope_with([[], {}, {}], headers={})),
    "protocol 1 no task": ("bad_body", envelope_with({"args": []}, headers={})),
    "args not list": ("bad_body", envelope_with([{"a": 1}, {}, {}])),
    "kwargs not object": ("bad_body", envelope_with([[], [], {}])),
    "task header not string": ("bad_envelope", envelope_with([[], {}, {}], headers={"task": 5})),
}


def test_missing_headers_is_rejected() -> None:
    envelope = _envelope_dict(envelope_with([[], {}, {}]))
    del envelope["headers"]
    with pytest.raises(CeleryMessageError) as err:
        parse_celery_message(json.dumps(envelope))
    assert err.value.reason == "bad_envelope"


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_5_2_01_bad_envelope_gives_clear_error(case: str) -> None:
    reason, raw = BAD_MESSAGES[case]
    with pytest.raises(CeleryMessageError) as err:
        parse_celery_message(raw)
    assert err.value.reason == reason
    assert str(err.value)


def test_unknown_task_name_is_missing_handler() -> None:
    raw = encode_task_message("posthog.tasks.other", [1], {}, queue=QUEUE)
    task = parse_celery_message(raw)
    with pytest.raises(
        CeleryMessageError, match=r"Missing process handler for task posthog\.tasks\.other"
    ) as err:
        event_from_task(task, raw)
    assert err.value.reason == "unknown_task"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["u", None, "s", DATA], "needs 7 arguments"),
        (["u", None, "s", DATA, "2", NOW, None], "team_id argument is not an integer"),
        (["u", None, "s", DATA, True, NOW, None], "team_id argument is not an integer"),
        (["u", None, "s", "not a dict", 2, NOW, None], "event data argument is not an object"),
        (["u", None, "s", None, 2, NOW, None], "event data argument is not an object"),
    ],
)
def test_bad_process_event_arguments(args: list[Any], fragment: str) -> None:
    raw = encode_task_message(PROCESS_EVENT_TASK, args, {}, queue=QUEUE)
    with pytest.raises(CeleryMessageError, match=fragment) as err:
        event_from_task(parse_celery_message(raw), raw)
    assert err.value.reason == "bad_arguments"


def test_bad_arguments_error_names_the_team_when_known() -> None:
    raw = encode_task_message(PROCESS_EVENT_TASK, ["u", None, "s", [1], 5, NOW, None], {}, queue=QUEUE)
    with pytest.raises(CeleryMessageError) as err:
        event_from_task(parse_celery_message(raw), raw)
    assert err.value.team_id == 5


@pytest.mark.parametrize(
    "args",
    [
        [2, 39, "job"],
        ["2", 39, "job", "start", {}],
        [2, "39", "job", "start", {}],
        [2, 39, "job", "start", []],
    ],
)
def test_bad_plugin_job_arguments(args: list[Any]) -> None:
    raw = encode_task_message(PLUGIN_JOB_TASK, args, {}, queue=QUEUE)
    with pytest.raises(CeleryMessageError) as err:
        job_from_task(parse_celery_message(raw))
    assert err.value.reason == "bad_arguments"


def test_integral_floats_are_read_as_javascript_numbers() -> None:
    """Python SDKs and Django write `1.0`; the original parsed it as the number 1 and stored `1`."""
    properties = {"one": 1.0, "half": 0.5, "thousand": 1e3, "minus_zero": -0.0, "huge": 1e300, "big": 2**70}
    raw = django_event(data={**DATA, "properties": properties})
    event = event_from_task(parse_celery_message(raw), raw).event
    assert event["properties"] == {
        "one": 1,
        "half": 0.5,
        "thousand": 1000,
        "minus_zero": 0,
        "huge": 1e300,
        "big": 2**70,
    }
    assert [type(event["properties"][k]) for k in ("one", "thousand", "minus_zero")] == [int, int, int]


def test_floats_javascript_prints_otherwise_keep_javascript_text() -> None:
    """§5.2 #29: `1e21` is `1e+21` in the original's JSON; small and huge values likewise."""
    from plugin_server.ingestion.js import json_text

    raw = django_event(data={**DATA, "properties": {"a": 1e21, "b": 1.5e300, "c": 1e-7, "d": 0.000001}})
    properties = event_from_task(parse_celery_message(raw), raw).event["properties"]
    assert json_text(properties) == '{"a":1e+21,"b":1.5e+300,"c":1e-7,"d":0.000001}'
