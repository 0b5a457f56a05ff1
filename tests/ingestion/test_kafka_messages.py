"""The Kafka-mode messages, field by field and byte by byte (spec/ingestion.md §3.3)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

from plugin_server.ingestion import kafka_messages as km


def only_value(record: km.ProducerRecord) -> bytes:
    [message] = record.messages
    assert message.value is not None
    return message.value


def test_events_topic_is_a_length_delimited_protobuf_event() -> None:
    record = km.event_record(
        uuid="u",
        event="e",
        properties={},
        timestamp="t",
        team_id=2,
        distinct_id="d",
        created_at="c",
        elements_chain="",
    )
    assert record.topic == "clickhouse_events_proto"
    [message] = record.messages
    assert message.key == b"u"
    # Hand-encoded: 23-byte body; fields 1-8 in order, the empty elements chain written too.
    assert message.value == bytes.fromhex("17" + "0a01751201651a027b7d22017428023201643a01634200")


def test_events_topic_fields_round_trip_with_unicode_and_large_values() -> None:
    props = {"$browser": "Chrome", "text": "💻 naïve", "$set": {"a": 1}}
    record = km.event_record(
        uuid="017cc6a1-4f2b-0000-8c3e-6b1f2a9d7e01",
        event="$autocapture",
        properties=props,
        timestamp="2021-10-28 12:00:00.000",
        team_id=300,
        distinct_id="user-1",
        created_at="2021-10-28T12:00:01.123Z",
        elements_chain='a.btn:nth-child="1"',
    )
    value = only_value(record)
    assert value[0] & 0x80  # the body is longer than 127 bytes: a two-byte length prefix
    decoded = km.decode_event_proto(value)
    assert decoded == {
        "uuid": "017cc6a1-4f2b-0000-8c3e-6b1f2a9d7e01",
        "event": "$autocapture",
        "properties": '{"$browser":"Chrome","text":"💻 naïve","$set":{"a":1}}',
        "timestamp": "2021-10-28 12:00:00.000",
        "team_id": 300,
        "distinct_id": "user-1",
        "created_at": "2021-10-28T12:00:01.123Z",
        "elements_chain": 'a.btn:nth-child="1"',
    }
    assert b"\xf0\x9f\x92\xbb" in value  # non-ASCII is UTF-8, not escaped


def test_timestamp_formats() -> None:
    moment = datetime(2021, 10, 28, 14, 0, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert km.clickhouse_time(moment) == "2021-10-28 12:00:05.123"
    assert km.clickhouse_seconds(moment) == "2021-10-28 12:00:05"
    assert km.iso_time(moment) == "2021-10-28T12:00:05.123Z"
    assert km.clickhouse_time(datetime(2021, 1, 1)) == "2021-01-01 00:00:00.000"  # naive is UTC


def test_session_recording_message() -> None:
    record = km.session_recording_record(
        uuid="u1",
        team_id=2,
        distinct_id="some-id",
        timestamp="2021-10-28 12:00:00.000",
        session_id="abcf-efg",
        snapshot_data={"timestamp": 123},
    )
    assert record.topic == "clickhouse_session_recording_events"
    assert record.messages[0].key == b"u1"
    assert only_value(record) == (
        b'{"uuid":"u1","team_id":2,"distinct_id":"some-id","session_id":"abcf-efg",'
        b'"snapshot_data":"{\\"timestamp\\":123}","timestamp":"2021-10-28 12:00:00.000",'
        b'"created_at":"2021-10-28 12:00:00.000"}'
    )


def test_session_recording_without_session_id_or_snapshot_leaves_the_keys_out() -> None:
    record = km.session_recording_record(uuid="u1", team_id=2, distinct_id="d", timestamp="ts")
    assert json.loads(only_value(record)) == {
        "uuid": "u1",
        "team_id": 2,
        "distinct_id": "d",
        "timestamp": "ts",
        "created_at": "ts",
    }


def test_person_message() -> None:
    created = datetime(2021, 10, 28, 12, 0, 5, 999000, tzinfo=UTC)
    record = km.person_record(
        uuid="p-uuid", created_at=created, properties={"userProp": "propValue"}, team_id=2, is_identified=True
    )
    assert record.topic == "clickhouse_person"
    assert record.messages[0].key is None
    assert only_value(record) == (
        b'{"id":"p-uuid","created_at":"2021-10-28 12:00:05","properties":"{\\"userProp\\":\\"propValue\\"}",'
        b'"team_id":2,"is_identified":true,"is_deleted":0}'
    )
    deleted = km.person_record(
        uuid="p", created_at=created, properties={}, team_id=2, is_identified=False, is_deleted=1
    )
    assert json.loads(only_value(deleted))["is_deleted"] == 1


def test_person_distinct_id_messages() -> None:
    row = {"id": 7, "team_id": 2, "person_id": 41, "distinct_id": "distinct1"}  # table column order
    created = km.person_distinct_id_record(row, "p-uuid")
    assert created.topic == "clickhouse_person_unique_id"
    assert only_value(created) == (
        b'{"id":7,"team_id":2,"person_id":"p-uuid","distinct_id":"distinct1","is_deleted":0}'
    )
    moved = km.person_distinct_id_move_record(row, target_uuid="target", source_uuid="source")
    assert moved.topic == "clickhouse_person_unique_id"
    assert [m.value for m in moved.messages] == [
        b'{"team_id":2,"person_id":"target","distinct_id":"distinct1","is_deleted":0}',
        b'{"team_id":2,"person_id":"source","distinct_id":"distinct1","is_deleted":1}',
    ]


def test_4_1_52_groups_message() -> None:
    record = km.group_record(
        team_id=2,
        group_type_index=0,
        group_key="org::5",
        properties={"foo": "bar"},
        created_at=datetime(2021, 10, 28, 12, 0, 5, 500000, tzinfo=UTC),
    )
    assert record.topic == "clickhouse_groups"
    assert only_value(record) == (
        b'{"group_type_index":0,"group_key":"org::5","team_id":2,'
        b'"group_properties":"{\\"foo\\":\\"bar\\"}","created_at":"2021-10-28 12:00:05"}'
    )
    now_text = json.loads(
        only_value(km.group_record(team_id=2, group_type_index=1, group_key="k", properties={}))
    )["created_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", now_text)


def test_plugin_log_entry_message() -> None:
    entry = {
        "id": "e-1",
        "team_id": 2,
        "plugin_id": 60,
        "plugin_config_id": 39,
        "timestamp": "2021-10-27 12:34:56.789",
        "source": "SYSTEM",
        "type": "INFO",
        "message": "plugin loaded",
        "instance_id": "i-1",
    }
    record = km.plugin_log_entry_record(entry)
    assert record.topic == "plugin_log_entries"
    assert record.messages[0].key == b"e-1"
    assert only_value(record) == (
        b'{"id":"e-1","team_id":2,"plugin_id":60,"plugin_config_id":39,"timestamp":"2021-10-27 12:34:56.789",'
        b'"source":"SYSTEM","type":"INFO","message":"plugin loaded","instance_id":"i-1"}'
    )


def test_4_2_54_dead_letter_message() -> None:
    event = {
        "distinct_id": "my_id",
        "ip": "127.0.0.1",
        "site_url": "http://localhost",
        "team_id": 2,
        "now": "2021-10-28T12:00:01.123456+00:00",
        "sent_at": "2021-10-28T12:00:00.5Z",
        "event": "default event",
        "properties": {"key": "value"},
        "timestamp": "2021-10-28T12:00:00.000Z",
        "uuid": "017cc6a1-4f2b-0000-8c3e-6b1f2a9d7e01",
    }
    record = km.dead_letter_record(event, Exception("database unavailable"))
    assert record.topic == "events_dead_letter_queue"
    assert record.messages[0].key is None
    payload = json.loads(only_value(record))
    # Key order: the event's keys (less now/sent_at/timestamp) where they were, then the added ones.
    assert list(payload) == [
        "distinct_id",
        "ip",
        "site_url",
        "team_id",
        "event",
        "properties",
        "uuid",
        "id",
        "event_uuid",
        "now",
        "error_timestamp",
        "raw_payload",
        "error_location",
        "error",
    ]
    assert payload["event"] == "default event"
    assert payload["ip"] == "127.0.0.1"
    assert payload["team_id"] == 2
    assert payload["error_location"] == "plugin_server_ingest_event"
    assert payload["error"] == "ingestEvent failed. Error: database unavailable"
    assert payload["properties"] == '{"key":"value"}'
    assert payload["event_uuid"] == event["uuid"]
    assert payload["now"] == "2021-10-28 12:00:01"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", payload["error_timestamp"])
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", payload["id"])
    assert payload["id"] != event["uuid"]
    assert json.loads(payload["raw_payload"]) == event


def test_dead_letter_error_text_and_missing_fields() -> None:
    payload = km.dead_letter_payload({"event": "x"}, "database unavailable")
    assert payload["error"] == "ingestEvent failed. Error: database unavailable"
    assert km.dead_letter_payload({}, object())["error"] == "ingestEvent failed. "
    assert payload["now"] is None
    assert payload["properties"] == "{}"
    assert payload["event_uuid"] is None
    assert km.dead_letter_payload({"now": "yesterday"}, ValueError("x"))["now"] == "Invalid DateTime"


def test_dead_letter_of_an_oversized_event_is_cut_to_fit() -> None:
    event = {"event": "big", "uuid": "u", "properties": {"blob": "y" * 50_000}}
    record = km.dead_letter_record(event, Exception("too large"), max_bytes=10_000)
    value = only_value(record)
    assert len(value) <= 10_000
    payload = json.loads(value)
    assert payload["event_uuid"] == "u"
    assert payload["error"].startswith("ingestEvent failed. Error: too large")
    assert "cut" in payload["error"]


def test_lone_surrogates_become_replacement_characters() -> None:
    """A name cut inside a surrogate pair is sent as U+FFFD, as Node's UTF-8 encoder does."""
    assert km.encode_json({"e": "ab\ud83d"}) == '{"e":"ab\ufffd"}'.encode()
    value = km.encode_event_proto(
        uuid="u",
        event="ab\ud83d",
        properties="{}",
        timestamp="",
        team_id=1,
        distinct_id="",
        created_at="",
        elements_chain="",
    )
    assert km.decode_event_proto(value)["event"] == "ab\ufffd"
