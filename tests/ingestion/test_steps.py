"""Pure unit tests of ingestion steps: timestamps, JS value semantics, elements, properties, UUIDT."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from plugin_server.ingestion.elements import (
    chain_to_elements,
    elements_hash,
    elements_to_chain,
    extract_elements,
)
from plugin_server.ingestion.identify import is_illegal_distinct_id
from plugin_server.ingestion.js import js_number, js_string, loose_equals, number_text, truthy, utf16_cut
from plugin_server.ingestion.persons import apply_property_updates
from plugin_server.ingestion.properties import with_initial_and_campaign
from plugin_server.ingestion.timestamps import (
    InvalidTimestamp,
    compute_timestamp,
    from_datetime,
    iso_text,
    parse_iso,
    parse_lenient,
)
from plugin_server.ingestion.uuidt import is_valid_uuid, uuidt

NOW = parse_iso("2020-01-01T12:00:05.200Z")


@pytest.mark.parametrize(
    ("timestamp", "offset", "sent_at", "expected"),
    [
        ("2020-01-01T12:00:04.000Z", None, "2020-01-01T12:00:05.000Z", "2020-01-01T12:00:04.200Z"),
        ("2020-01-01T12:00:04.000Z", None, None, "2020-01-01T12:00:04.000Z"),
        ("2020-01-01T12:00:04+02:00", None, None, "2020-01-01T10:00:04.000Z"),
        ("2020-01-01 12:00:04", None, "2020-01-01T12:00:05.000Z", "2020-01-01T12:00:04.200Z"),
        (1577880004000, None, "2020-01-01T12:00:05.000Z", "2020-01-01T12:00:04.200Z"),
        (None, 150, None, "2020-01-01T12:00:05.050Z"),
        (None, "150", "2020-01-01T12:00:05.000Z", "2020-01-01T12:00:05.050Z"),
        (None, None, None, "2020-01-01T12:00:05.200Z"),
        ("2020-01-01T12:00:04.123456Z", None, None, "2020-01-01T12:00:04.123Z"),
    ],
)
def test_2_4_timestamp_table(timestamp: object, offset: object, sent_at: str | None, expected: str) -> None:
    sent_at_ms = parse_iso(sent_at) if sent_at else None
    assert iso_text(compute_timestamp(timestamp, offset, NOW, sent_at_ms)) == expected


@pytest.mark.parametrize(
    ("timestamp", "sent_at"),
    [
        ("2020-01-01 12:00:04", None),
        (1577880004000, None),
        ("garbage", "2020-01-01T12:00:05.000Z"),
        ("2020-02-30", None),
    ],
)
def test_2_4_invalid_timestamps_raise(timestamp: object, sent_at: str | None) -> None:
    """Recommendation: an invalid time is an error, never a stored NULL or `Invalid DateTime`."""
    with pytest.raises(InvalidTimestamp):
        compute_timestamp(timestamp, None, NOW, parse_iso(sent_at) if sent_at else None)


def test_2_4_parsers_agree_with_datetime() -> None:
    for text in (
        "1970-01-01T00:00:00Z",
        "2000-02-29T23:59:59.999Z",
        "1969-12-31T23:59:59Z",
        "2400-03-01T00:00:00Z",
    ):
        expected = from_datetime(datetime.fromisoformat(text))
        assert parse_iso(text) == expected == parse_lenient(text)
    assert parse_iso("2021-10-28T12:34:56.123456+00:00") == from_datetime(
        datetime(2021, 10, 28, 12, 34, 56, 123000, tzinfo=UTC)
    )
    assert parse_lenient("Wed, 01 Jan 2020 12:00:04 GMT") == parse_iso("2020-01-01T12:00:04Z")
    assert parse_iso("2021-02-29") is None and parse_iso("2020-01-01T25:00:00Z") is None


def test_0_1_js_semantics() -> None:
    assert [truthy(v) for v in ([], {}, "0", "false", 0, "", None, float("nan"), 0.0)] == [True] * 4 + [
        False
    ] * 5
    assert [number_text(v) for v in (2.0, 1e21, 1e-7, 1.5, 123e-20, 0.000001, -0.5)] == [
        "2",
        "1e+21",
        "1e-7",
        "1.5",
        "1.23e-18",
        "0.000001",
        "-0.5",
    ]
    assert [js_string(v) for v in (True, None, [1, "a", None], {"a": 1}, 2.0)] == [
        "true",
        "null",
        "1,a,",
        "[object Object]",
        "2",
    ]
    assert js_number(" 12 ") == 12 and js_number("") == 0 and js_number("0x10") == 16
    assert loose_equals([5], "5") and loose_equals(True, 1) and not loose_equals(None, 0)
    assert utf16_cut("ab😀", 3) == "ab\ufffd" and utf16_cut("ab😀", 4) == "ab😀"


def test_2_5_1_illegal_distinct_ids() -> None:
    for illegal in (
        "",
        "  ",
        "Anonymous",
        "GUEST",
        "distinctId",
        "undefined",
        "[object Object]",
        "NaN",
        "None",
        "none",
        "null",
        "0",
    ):
        assert is_illegal_distinct_id(illegal), illegal
    for legal in ("Nan", "NULL", "NONE", "user-1", "00"):
        assert not is_illegal_distinct_id(legal), legal


def test_2_6_initial_and_campaign_properties() -> None:
    props = {"utm_source": None, "$browser": "Chrome", "$set": {"utm_source": "explicit", "x": 1}}
    result = with_initial_and_campaign(props)
    assert result["$set"] == {"utm_source": None, "x": 1}
    assert result["$set_once"] == {"$initial_browser": "Chrome", "$initial_utm_source": None}
    assert "$set_once" not in props  # a copy
    assert with_initial_and_campaign({"a": 1}) == {"a": 1}


def test_2_8_4_property_updates() -> None:
    stored = {"a": 1, "n": None, "obj": {"x": 1}}
    updated = apply_property_updates(
        stored, {"a": 1, "obj": {"x": 1}, "b": 2}, {"n": "once", "c": 3, "b": "once"}
    )
    assert updated == {"a": 1, "n": None, "obj": {"x": 1}, "b": 2, "c": 3}
    assert stored == {"a": 1, "n": None, "obj": {"x": 1}}  # a copy was changed
    # An absent key is `undefined` in the original: `undefined !== null`, so a null is set.
    assert apply_property_updates({}, {"k": None}, {}) == {"k": None}
    # Nothing to change: the same dict comes back (the Kafka writer reuses its message then).
    unchanged = {"a": 1, "n": None}
    assert apply_property_updates(unchanged, {"a": 1}, {"n": 2, "a": 3}) is unchanged


def test_2_11_extraction_and_hash() -> None:
    raw = [
        {
            "tag_name": "a",
            "$el_text": None,
            "attr__class": "a  b",
            "attr__href": "/x",
            "nth_child": 1,
            "other": 5,
        },
        {"tag_name": None},
    ]
    assert extract_elements(raw) == [
        {
            "tag_name": "a",
            "href": "/x",
            "attr_class": ["a", "", "b"],
            "nth_child": 1,
            "attributes": {"attr__class": "a  b", "attr__href": "/x"},
        },
        {"tag_name": None, "attributes": {}},
    ]
    # Python-json-dumps layout with DEL left raw and JavaScript number text
    assert elements_hash([{"text": "\x7f", "nth_child": 1.0}]) == elements_hash(
        [{"text": "\x7f", "nth_child": 1}]
    )


def test_4_2_055_elements_chain_round_trip() -> None:
    elements = [
        {
            "tag_name": "a",
            "href": "/a-url",
            "attr_class": ["small"],
            "text": "bla bla",
            "nth_child": 1,
            "nth_of_type": 0,
            "attributes": {
                "prop": "value",
                "number": 33,
                "data-attr": 'something " that; could mess up',
                "style": "min-height: 100vh;",
            },
        },
        {"tag_name": "button", "attr_class": ["btn", "btn-primary"], "nth_child": 0, "nth_of_type": 0},
        {"tag_name": "div", "nth_child": 0, "nth_of_type": 0},
        {"tag_name": "div", "nth_child": 0, "nth_of_type": 0, "attr_id": "nested"},
    ]
    chain = elements_to_chain(elements)
    assert chain == ";".join(
        [
            'a.small:data-attr="something \\" that; could mess up"href="/a-url"nth-child="1"nth-of-type="0"'
            'number="33"prop="value"style="min-height: 100vh;"text="bla bla"',
            'button.btn.btn-primary:nth-child="0"nth-of-type="0"',
            'div:nth-child="0"nth-of-type="0"',
            'div:attr_id="nested"nth-child="0"nth-of-type="0"',
        ]
    )
    parsed = chain_to_elements(chain)
    assert len(parsed) == 4
    assert (
        parsed[0]["tag_name"] == "a"
        and parsed[0]["href"] == "/a-url"
        and parsed[0]["attr_class"] == ["small"]
    )
    assert parsed[0]["attributes"] == {
        "prop": "value",
        "number": "33",
        "data-attr": 'something \\" that; could mess up',
        "style": "min-height: 100vh;",
    }
    assert parsed[0]["nth_child"] == 1 and parsed[0]["nth_of_type"] == 0
    assert parsed[1]["attr_class"] == ["btn", "btn-primary"] and parsed[3]["attr_id"] == "nested"


def test_3_6_uuidt_layout() -> None:
    ms = 1_600_000_000_000
    first, second = uuidt(ms), uuidt(ms)
    ms_hex = f"{ms:012x}"
    assert is_valid_uuid(first) and first[:13] == second[:13] == f"{ms_hex[:8]}-{ms_hex[8:]}"
    assert int(second[14:18], 16) == int(first[14:18], 16) + 1
    assert is_valid_uuid("017CC6A1-4F2B-0000-8C3E-6B1F2A9D7E01") and not is_valid_uuid("not-a-uuid")


def test_initial_and_campaign_values_keep_the_order_the_properties_came_in() -> None:
    """The original builds `$set_once` from the properties in their order (seen in its Kafka output)."""
    from plugin_server.ingestion.properties import with_initial_and_campaign

    result = with_initial_and_campaign(
        {"$current_url": "u", "utm_source": "s", "$browser": "b", "$set_once": {"x": 1}}
    )
    assert list(result["$set_once"]) == [
        "x",
        "$initial_current_url",
        "$initial_utm_source",
        "$initial_browser",
    ]
    assert result["$set"] == {"utm_source": "s"}
