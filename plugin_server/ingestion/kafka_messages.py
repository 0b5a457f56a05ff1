"""The messages Kafka mode produces for ClickHouse, byte-compatible with the original
(spec/ingestion.md §3.3; services.md §8.2 for plugin log entries).

JSON payloads are compact UTF-8 with non-ASCII kept as is, keys in the original's order. The
events topic carries a length-delimited protobuf `Event` (src/config/idl/events.proto).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from plugin_server.ingestion.js import encode_js_float
from plugin_server.ingestion.js import json_text as js_json_text
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.queues.kafka_producer import KafkaMessage, ProducerRecord

TOPIC_EVENTS = "clickhouse_events_proto"
TOPIC_SESSION_RECORDING_EVENTS = "clickhouse_session_recording_events"
TOPIC_PERSON = "clickhouse_person"
TOPIC_PERSON_UNIQUE_ID = "clickhouse_person_unique_id"
TOPIC_GROUPS = "clickhouse_groups"
TOPIC_PLUGIN_LOG_ENTRIES = "plugin_log_entries"
TOPIC_DEAD_LETTER_QUEUE = "events_dead_letter_queue"
TOPIC_EVENTS_PLUGIN_INGESTION = "events_plugin_ingestion"

ERROR_LOCATION_INGEST = "plugin_server_ingest_event"
ERROR_LOCATION_PARSE = "plugin_server_parse_message"
# What luxon prints for a date it could not parse; ClickHouse sees the same text as before.
INVALID_DATETIME = "Invalid DateTime"

_encoder = msgspec.json.Encoder(enc_hook=encode_js_float)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_json(value: Any) -> bytes:
    """Compact JSON (like JSON.stringify), non-ASCII characters not escaped."""
    try:
        return _encoder.encode(value)
    except (TypeError, OverflowError, UnicodeEncodeError):
        # Values msgspec refuses (exotic objects a plugin left behind, lone surrogates): use
        # json, and turn a lone surrogate into U+FFFD as Node does when it encodes to UTF-8.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        return _LONE_SURROGATE.sub("\ufffd", text).encode()


def json_text(value: Any) -> str:
    """JSON text of a nested value (properties, snapshot data), numbers as JavaScript prints them."""
    text = js_json_text(value)
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


# ---------------------------------------------------------------------- timestamps
def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# Formatted by hand: strftime is the slower way and these run for every message.
def clickhouse_time(moment: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS.mmm` in UTC."""
    m = _utc(moment)
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d} {m.hour:02d}:{m.minute:02d}:{m.second:02d}"
        f".{m.microsecond // 1000:03d}"
    )


def clickhouse_seconds(moment: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS` in UTC."""
    m = _utc(moment)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d} {m.hour:02d}:{m.minute:02d}:{m.second:02d}"


def iso_time(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC."""
    m = _utc(moment)
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
        f".{m.microsecond // 1000:03d}Z"
    )


def parse_iso(text: str) -> datetime | None:
    """An ISO-8601 text as an aware datetime (naive means UTC), or None if it is not one."""
    try:
        return _utc(datetime.fromisoformat(text))
    except (TypeError, ValueError):
        return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------- protobuf
_ONE_BYTE = [bytes([n]) for n in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate becomes U+FFFD, as Node's Buffer makes it
        return _LONE_SURROGATE.sub("\ufffd", text).encode()


def encode_event_proto(
    *,
    uuid: str,
    event: str,
    properties: str,
    timestamp: str,
    team_id: int,
    distinct_id: str,
    created_at: str,
    elements_chain: str,
) -> bytes:
    """A length-delimited protobuf `Event`. Fields 1-8 are written even when empty, as the
    original's encoder did; 9 and 10 (google.protobuf.Timestamp) are never set."""
    uuid_b, event_b, properties_b, timestamp_b = (
        _utf8(uuid),
        _utf8(event),
        _utf8(properties),
        _utf8(timestamp),
    )
    distinct_b, created_b, chain_b = _utf8(distinct_id), _utf8(created_at), _utf8(elements_chain)
    varint = _varint
    # fmt: off
    parts = (
        b"\x0a", varint(len(uuid_b)), uuid_b,
        b"\x12", varint(len(event_b)), event_b,
        b"\x1a", varint(len(properties_b)), properties_b,
        b"\x22", varint(len(timestamp_b)), timestamp_b,
        b"\x28", varint(team_id & 0xFFFFFFFFFFFFFFFF),  # field 5 is a varint
        b"\x32", varint(len(distinct_b)), distinct_b,
        b"\x3a", varint(len(created_b)), created_b,
        b"\x42", varint(len(chain_b)), chain_b,
    )
    # fmt: on
    body = b"".join(parts)
    return _varint(len(body)) + body


_EVENT_FIELDS = {
    1: "uuid",
    2: "event",
    3: "properties",
    4: "timestamp",
    5: "team_id",
    6: "distinct_id",
    7: "created_at",
    8: "elements_chain",
}


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode_event_proto(data: bytes) -> dict[str, Any]:
    """Read a length-delimited `Event` back (for tests and tooling); unknown fields skipped."""
    length, pos = _read_varint(data, 0)
    end = pos + length
    if end != len(data):
        raise ValueError(f"delimited length {length} does not match {len(data) - pos} bytes of message")
    decoded: dict[str, Any] = {}
    while pos < end:
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            decoded[_EVENT_FIELDS.get(number, str(number))] = value
        elif wire_type == 2:
            size, pos = _read_varint(data, pos)
            raw = data[pos : pos + size]
            pos += size
            name = _EVENT_FIELDS.get(number)
            decoded[name or str(number)] = raw.decode() if name else raw
        else:
            raise ValueError(f"unexpected wire type {wire_type} for field {number}")
    return decoded


# ---------------------------------------------------------------------- records
def _record(topic: str, payload: Any, key: str | None = None) -> ProducerRecord:
    return ProducerRecord(
        topic, [KafkaMessage(encode_json(payload), key.encode() if key is not None else None)]
    )


def event_record(
    *,
    uuid: str,
    event: str,
    properties: Mapping[str, Any] | str,
    timestamp: str,
    team_id: int,
    distinct_id: str,
    created_at: str,
    elements_chain: str,
) -> ProducerRecord:
    """`clickhouse_events_proto`, keyed by the event uuid. `timestamp` is CH format (or
    INVALID_DATETIME), `created_at` ISO format, as the original sent them (§3.3.1).
    `properties` may be given as its JSON text already."""
    value = encode_event_proto(
        uuid=uuid,
        event=event,
        properties=properties if isinstance(properties, str) else json_text(properties),
        timestamp=timestamp,
        team_id=team_id,
        distinct_id=distinct_id,
        created_at=created_at,
        elements_chain=elements_chain,
    )
    return ProducerRecord(TOPIC_EVENTS, [KafkaMessage(value, uuid.encode())])


_MISSING: Any = object()


def session_recording_record(
    *,
    uuid: str,
    team_id: int,
    distinct_id: str,
    timestamp: str,
    session_id: Any = _MISSING,
    snapshot_data: Any = _MISSING,
    snapshot_json: str | None = None,
) -> ProducerRecord:
    """`clickhouse_session_recording_events`, keyed by uuid; `created_at` repeats the event's
    CH timestamp. A missing session id or snapshot leaves its key out (§2.7)."""
    payload: dict[str, Any] = {"uuid": uuid, "team_id": team_id, "distinct_id": distinct_id}
    if session_id is not _MISSING:
        payload["session_id"] = session_id
    if snapshot_json is not None:
        payload["snapshot_data"] = snapshot_json
    elif snapshot_data is not _MISSING:
        payload["snapshot_data"] = json_text(snapshot_data)
    payload["timestamp"] = timestamp
    payload["created_at"] = timestamp
    return _record(TOPIC_SESSION_RECORDING_EVENTS, payload, key=uuid)


def person_record(
    *,
    uuid: str,
    created_at: datetime,
    properties: Mapping[str, Any],
    team_id: int,
    is_identified: bool,
    is_deleted: int = 0,
) -> ProducerRecord:
    """`clickhouse_person` (no key): the person's full state after a create, update or delete."""
    return _record(
        TOPIC_PERSON,
        {
            "id": uuid,
            "created_at": clickhouse_seconds(created_at),
            "properties": json_text(properties),
            "team_id": team_id,
            "is_identified": bool(is_identified),
            "is_deleted": is_deleted,
        },
    )


def person_distinct_id_record(row: Mapping[str, Any], person_uuid: str) -> ProducerRecord:
    """`clickhouse_person_unique_id` for an inserted posthog_persondistinctid row: the row's
    columns in table order with person_id replaced by the person's uuid, plus is_deleted 0."""
    return _record(TOPIC_PERSON_UNIQUE_ID, {**row, "person_id": person_uuid, "is_deleted": 0})


def person_distinct_id_move_record(
    row: Mapping[str, Any], target_uuid: str, source_uuid: str
) -> ProducerRecord:
    """`clickhouse_person_unique_id` for a distinct id moved by a merge: one record with two
    messages, without the row id: the id now on the target, and no longer on the source."""
    columns = {name: value for name, value in row.items() if name != "id"}
    return ProducerRecord(
        TOPIC_PERSON_UNIQUE_ID,
        [
            KafkaMessage(encode_json({**columns, "person_id": target_uuid, "is_deleted": 0})),
            KafkaMessage(encode_json({**columns, "person_id": source_uuid, "is_deleted": 1})),
        ],
    )


def group_record(
    *,
    team_id: int,
    group_type_index: int,
    group_key: Any,
    properties: Any,
    created_at: datetime | None = None,
) -> ProducerRecord:
    """`clickhouse_groups` (no key) for a `$groupidentify`."""
    return _record(
        TOPIC_GROUPS,
        {
            "group_type_index": group_type_index,
            "group_key": group_key,
            "team_id": team_id,
            "group_properties": json_text(properties),
            "created_at": clickhouse_seconds(created_at or _utcnow()),
        },
    )


def plugin_log_entry_record(entry: Mapping[str, Any]) -> ProducerRecord:
    """`plugin_log_entries`, keyed by the entry id. `entry` holds id, team_id, plugin_id,
    plugin_config_id, timestamp, source, type, message, instance_id (services §8.2)."""
    return _record(TOPIC_PLUGIN_LOG_ENTRIES, dict(entry), key=str(entry["id"]))


def _error_text(error: BaseException | str | object) -> str:
    # The original appended the message only for Error objects (a thrown non-Error gave just the
    # prefix); here an error is an exception or its message.
    if isinstance(error, BaseException | str):
        return f"ingestEvent failed. Error: {error}"
    return "ingestEvent failed. "


def _now_seconds(now: Any) -> str | None:
    if not now:
        return None
    parsed = parse_iso(now) if isinstance(now, str) else None
    return clickhouse_seconds(parsed) if parsed is not None else INVALID_DATETIME


def dead_letter_payload(
    event: Mapping[str, Any],
    error: BaseException | str | object,
    error_location: str = ERROR_LOCATION_INGEST,
    *,
    raw_payload: str | None = None,
) -> dict[str, Any]:
    """The `events_dead_letter_queue` object for a failed event (§3.3.6): the event's keys
    except now/sent_at/timestamp, then id, event_uuid, properties, now, error_timestamp,
    raw_payload, error_location and error (an existing key keeps its place, as in JS)."""
    payload = {key: value for key, value in event.items() if key not in ("now", "sent_at", "timestamp")}
    properties = event.get("properties")
    payload.update(
        id=uuidt(),
        event_uuid=event.get("uuid"),
        properties=json_text(properties if properties is not None else {}),
        now=_now_seconds(event.get("now")),
        error_timestamp=clickhouse_seconds(_utcnow()),
        raw_payload=raw_payload if raw_payload is not None else json_text(event),
        error_location=error_location,
        error=_error_text(error),
    )
    return payload


def dead_letter_record(
    event: Mapping[str, Any],
    error: BaseException | str | object,
    error_location: str = ERROR_LOCATION_INGEST,
    *,
    raw_payload: str | None = None,
    max_bytes: int | None = None,
) -> ProducerRecord:
    """A dead-letter record (no key). With `max_bytes`, a record that would be too large for
    the broker has its raw payload and properties cut so that the reason still gets through."""
    payload = dead_letter_payload(event, error, error_location, raw_payload=raw_payload)
    value = encode_json(payload)
    if max_bytes is not None and len(value) > max_bytes:
        for key in ("raw_payload", "properties"):
            text = payload[key]
            overflow = len(value) - max_bytes
            if overflow <= 0:
                break
            keep = max(0, len(text.encode()) - overflow - 64)
            payload[key] = text.encode()[:keep].decode("utf-8", "ignore") + "…[cut]"
            value = encode_json(payload)
        payload["error"] += " (payload cut to fit the broker's message size)"
        value = encode_json(payload)
    return ProducerRecord(TOPIC_DEAD_LETTER_QUEUE, [KafkaMessage(value)])
