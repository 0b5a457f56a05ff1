"""Spec §5 edge cases at the `PostgresIngestor.ingest` level: what is stored, what is
dead-lettered (with its reason), and that the rest of the batch is always saved."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.ingestion.pipeline import EVENTS_FAILED, PostgresIngestor
from plugin_server.ingestion.types import Outcome
from tests.factories import TEAM_ID, create_team
from tests.ingestion.conftest import (
    dead_letter_rows,
    distinct_ids_of,
    events,
    ingest,
    make_event,
    make_person,
    persons,
)


async def _one_bad_in_batch(
    pg: asyncpg.Pool,
    ingestor: PostgresIngestor,
    dead_letters: PostgresDeadLetterQueue,
    bad: dict[str, object],
) -> str:
    """Ingest `bad` between two good events; both good ones are saved. Returns the reason."""
    first, last = make_event("good 1", "good"), make_event("good 2", "good")
    assert await ingest(ingestor, first, bad, last) == [
        Outcome.INGESTED,
        Outcome.DEAD_LETTERED,
        Outcome.INGESTED,
    ]
    assert [e["event"] for e in await events(pg)] == ["good 1", "good 2"]
    (record,) = await dead_letter_rows(pg)
    assert record["stage"] == "plugin_server_ingest_event" and record["team_id"] == bad["team_id"]
    assert str(bad["uuid"]).encode() in record["raw"]
    return str(record["error"])


async def test_5_2_05_missing_and_non_string_distinct_ids(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    missing = make_event("e")
    del missing["distinct_id"]
    await ingest(ingestor, missing, make_event("e", 2.0), make_event("e", True), make_event("e", None))
    assert [e["distinct_id"] for e in await events(pg)] == ["undefined", "2", "true", "null"]
    assert len(await persons(pg)) == 4


async def test_5_2_05_undefined_distinct_id_never_identifies(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    await make_person(pg, ["anon"])
    event = make_event("$identify", None, {"$anon_distinct_id": "anon"})
    del event["distinct_id"]
    await ingest(ingestor, event)
    assert len(await persons(pg)) == 2


async def test_5_2_06_distinct_id_longer_than_200(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue
) -> None:
    error = await _one_bad_in_batch(pg, ingestor, dead_letters, make_event("e", "x" * 201))
    assert error == "distinct_id is longer than 200 characters"


async def test_5_2_07_missing_event_name(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue
) -> None:
    nameless = make_event()
    del nameless["event"]
    assert await _one_bad_in_batch(pg, ingestor, dead_letters, nameless) == "Event name is missing"


async def test_5_2_07_null_event_name_is_its_json_text(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    """Only a missing name fails; a null one is a non-string like any other (seen in the original)."""
    assert await ingest(ingestor, make_event(None)) == [Outcome.INGESTED]
    assert [e["event"] for e in await events(pg)] == ["null"]
    assert await pg.fetchval("SELECT name FROM posthog_eventdefinition") == "null"


async def test_5_2_08_cuts_count_utf16_code_units(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await ingest(ingestor, make_event("a" * 199 + "😀"))
    (event,) = await events(pg)
    assert event["event"] == "a" * 199 + "\ufffd"


@pytest.mark.parametrize("properties", ["a string", [1, 2]])
async def test_5_2_09_properties_not_an_object(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue, properties: object
) -> None:
    """Recommendation: error out (dead-letter) instead of storing."""
    bad = make_event("e")
    bad["properties"] = properties
    assert (await _one_bad_in_batch(pg, ingestor, dead_letters, bad)).startswith(
        "properties must be an object"
    )


async def test_5_2_09_null_properties_become_empty(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    event = make_event("e", ip=None)
    event["properties"] = None
    await ingest(ingestor, event)
    (stored,) = await events(pg)
    assert stored["properties"] == {}


async def test_5_2_10_elements_edge_cases(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue
) -> None:
    await ingest(ingestor, make_event("kept", "el", {"$elements": []}, ip=None))
    (stored,) = await events(pg)
    assert stored["properties"] == {"$elements": []} and stored["elements_hash"] == ""
    await pg.execute("TRUNCATE posthog_event CASCADE")
    bad = make_event("$autocapture", "el", {"$elements": [{"tag_name": "a", "$el_text": 5}]})
    assert (
        await _one_bad_in_batch(pg, ingestor, dead_letters, bad)
        == "element $el_text must be a string, got int"
    )
    # recorded as the original left the event: `$elements` already taken out (spec §3.3.6)
    [record] = await dead_letter_rows(pg)
    assert record["event"]["properties"] == {}


async def test_5_2_10_element_value_out_of_range_spoils_only_its_event(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue
) -> None:
    """A database error on one event (here an nth_child beyond int4) is isolated: the batch is
    retried event by event and only that event is dead-lettered."""
    bad = make_event("$autocapture", "el", {"$elements": [{"tag_name": "a", "nth_child": 2**40}]})
    error = await _one_bad_in_batch(pg, ingestor, dead_letters, bad)
    assert "out of" in error and "range" in error
    assert await pg.fetchval("SELECT count(*) FROM posthog_element") == 0
    assert (await persons(pg))[0]["properties"] == {}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"timestamp": "garbage"}, "Invalid timestamp: 'garbage'"),
        ({"timestamp": "2020-01-01 12:00:04", "sent_at": None}, "Invalid timestamp: '2020-01-01 12:00:04'"),
        ({"timestamp": 1577880004000, "sent_at": None}, "Invalid timestamp: 1577880004000"),
        ({"offset": "soon"}, "Invalid offset: 'soon'"),
        ({"now": "yesterday"}, "Invalid or missing `now`"),
    ],
)
async def test_5_2_11_13_invalid_times_are_dead_lettered(
    pg: asyncpg.Pool,
    ingestor: PostgresIngestor,
    dead_letters: dead_letter_rows,
    fields: dict[str, object],
    reason: str,
) -> None:
    """Recommendation (§2.4): a clear error instead of NULL or `Invalid DateTime`."""
    before = EVENTS_FAILED.labels("invalid_timestamp")._value.get()
    bad = make_event("e", "t")
    bad.update(fields)
    assert await _one_bad_in_batch(pg, ingestor, dead_letters, bad) == reason
    assert EVENTS_FAILED.labels("invalid_timestamp")._value.get() == before + 1


async def test_5_2_11_lenient_timestamp_with_sent_at(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    now = datetime(2020, 1, 1, 12, 0, 5, 200000, tzinfo=UTC)
    await ingest(
        ingestor,
        make_event("e", "t", now=now, timestamp="2020-01-01 12:00:04", sent_at="2020-01-01T12:00:05.000Z"),
        make_event("e", "t", now=now, timestamp=1577880004000, sent_at="2020-01-01T12:00:05.000Z"),
        make_event("e", "t", now=now, timestamp="2030-01-01T00:00:00Z", sent_at=None),
    )
    stamps = [e["timestamp"] for e in await events(pg)]
    expected = datetime(2020, 1, 1, 12, 0, 4, 200000, tzinfo=UTC)
    assert stamps == [expected, expected, datetime(2030, 1, 1, tzinfo=UTC)]  # no future clamping


async def test_5_2_12_invalid_sent_at_counts_as_absent(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    """Recommendation: an unparsable sent_at is treated as absent everywhere, so the person is
    still created (with the wall clock) and `$set` applies."""
    event = make_event(
        "e", "sent", {"$set": {"a": 1}}, sent_at="not a date", timestamp="2021-01-01T00:00:00Z"
    )
    assert await ingest(ingestor, event) == [Outcome.INGESTED]
    (person,) = await persons(pg)
    assert person["properties"] == {"a": 1}
    assert abs((person["created_at"] - datetime.now(UTC)).total_seconds()) < 60
    (stored,) = await events(pg)
    assert stored["timestamp"] == datetime(2021, 1, 1, tzinfo=UTC)


async def test_5_2_12_person_created_at_is_sent_at(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await ingest(ingestor, make_event("e", "sent", sent_at="2021-05-05T05:05:05.000Z"))
    (person,) = await persons(pg)
    assert person["created_at"] == datetime(2021, 5, 5, 5, 5, 5, tzinfo=UTC)


async def test_5_2_14_snapshot_for_unknown_team(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue
) -> None:
    snapshot = make_event("$snapshot", "s", {"$session_id": "x", "$snapshot_data": {}}, team_id=404)
    error = await _one_bad_in_batch(pg, ingestor, dead_letters, snapshot)
    assert error == "No team found with ID 404. Can't ingest event."
    assert await pg.fetchval("SELECT count(*) FROM posthog_sessionrecordingevent") == 0


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        ({"$snapshot_data": {}}, "$snapshot event without $session_id"),
        ({"$session_id": "abc"}, "$snapshot event without $snapshot_data"),
    ],
)
async def test_5_2_15_snapshot_without_session_or_data(
    pg: asyncpg.Pool,
    ingestor: PostgresIngestor,
    dead_letters: dead_letter_rows,
    properties: dict[str, object],
    reason: str,
) -> None:
    assert (
        await _one_bad_in_batch(pg, ingestor, dead_letters, make_event("$snapshot", "s", properties))
        == reason
    )


async def test_5_2_16_oversized_event(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue
) -> None:
    """Recommendation: the encoded size is checked per event and oversized events are dead-lettered."""
    limit = ingestor._max_bytes
    bad = make_event("big", "b", {"blob": "x" * (limit + 1)})
    assert (
        await _one_bad_in_batch(pg, ingestor, dead_letters, bad) == f"properties is larger than {limit} bytes"
    )


async def test_5_2_17_nul_characters(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue
) -> None:
    bad = make_event("nul", "n", {"text": "a\u0000b"})
    error = await _one_bad_in_batch(pg, ingestor, dead_letters, bad)
    assert error.startswith("properties contains a NUL character")


async def test_5_2_20_create_alias_without_alias(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["me"])
    assert await ingest(ingestor, make_event("$create_alias", "me")) == [Outcome.INGESTED]
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["me"]


async def test_5_2_21_illegal_anon_id_is_merged_normally(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    await ingest(ingestor, make_event("$identify", "real-user", {"$anon_distinct_id": "undefined"}))
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["real-user", "undefined"]


async def test_5_2_22_sixth_group_type_is_ignored(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    groups = {f"type{i}": f"key{i}" for i in range(6)}
    await ingest(ingestor, make_event("grouped", "g", {"$groups": groups}, ip=None))
    (event,) = await events(pg)
    assert {k: v for k, v in event["properties"].items() if k.startswith("$group_")} == {
        f"$group_{i}": f"key{i}" for i in range(5)
    }


async def test_5_2_03_team_id_from_payload_wins(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    """The event's own team_id is the one ingested (assembly lets data override the envelope)."""
    await ingest(ingestor, make_event("e", "x", team_id=str(TEAM_ID)))
    (event,) = await events(pg)
    assert event["team_id"] == TEAM_ID


async def test_2_1_dropped_events_and_plugin_view(pg: asyncpg.Pool, settings, dead_letters, team) -> None:  # type: ignore[no-untyped-def]
    """A plugin dropping an event ingests nothing; `$snapshot` skips processEvent; onEvent gets the
    post-plugin event untouched by ingestion (no `$ip`, `$elements` still there)."""
    from plugin_server.ingestion.types import PluginEvent

    class DropAndRecord:
        def __init__(self) -> None:
            self.processed: list[str] = []
            self.ingested: list[PluginEvent] = []

        async def process_events(self, events: list[PluginEvent]) -> list[PluginEvent | None]:
            self.processed += [e["event"] for e in events]
            return [None if e["event"] == "drop me" else e for e in events]

        def on_events_ingested(self, events: list[PluginEvent]) -> None:
            self.ingested += events

    plugins = DropAndRecord()
    ingestor = PostgresIngestor(pg, settings, plugins, dead_letters)
    await ingestor.start()
    elements = [{"tag_name": "a"}]
    batch = [
        make_event("drop me"),
        make_event("$snapshot", "s", {"$session_id": "1", "$snapshot_data": "yes way"}),
        make_event("$autocapture", "a", {"$elements": elements}),
    ]
    assert await ingest(ingestor, *batch) == [Outcome.DROPPED, Outcome.INGESTED, Outcome.INGESTED]
    assert plugins.processed == ["drop me", "$autocapture"]
    assert [e["event"] for e in plugins.ingested] == ["$snapshot", "$autocapture"]
    assert plugins.ingested[1]["properties"] == {"$elements": elements}
    assert [e["event"] for e in await events(pg)] == ["$autocapture"]
    await ingestor.stop()


async def _person_state(pg: asyncpg.Pool, team_id: int) -> list[tuple[list[str], Any, bool]]:
    rows = await pg.fetch(
        """SELECT p.properties, p.is_identified, array_agg(d.distinct_id ORDER BY d.distinct_id) AS ids
           FROM posthog_person p JOIN posthog_persondistinctid d ON d.person_id = p.id
           WHERE p.team_id = $1 GROUP BY p.id""",
        team_id,
    )
    return sorted((list(r["ids"]), r["properties"], r["is_identified"]) for r in rows)


async def test_a_batch_with_aliases_changes_persons_as_one_event_at_a_time(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    """Persons no alias of the batch reaches are changed before the aliases run; the rest in
    order around them. Same batch, same start, two teams: all at once vs one event at a time."""
    other_team = TEAM_ID + 1
    await create_team(pg, other_team, ingested_event=True)
    for team_id in (TEAM_ID, other_team):
        await make_person(pg, ["u1", "u1-phone"], {"plan": "free"}, team_id=team_id)  # reached via u1
        await make_person(pg, ["u2"], {"plan": "pro", "seats": 5}, team_id=team_id)  # merged into u1's
        await make_person(pg, ["bystander"], {"n": 0}, team_id=team_id)  # never reached

    def batch(team_id: int) -> list[dict[str, Any]]:
        return [
            make_event("e", "bystander", {"$set": {"n": 1}}, team_id=team_id),
            make_event("e", "u1-phone", {"$set": {"plan": "trial", "phone": True}}, team_id=team_id),
            make_event("e", "anon-1", {"$set_once": {"first": "anon"}}, team_id=team_id),
            make_event("$identify", "u1", {"$anon_distinct_id": "anon-1"}, team_id=team_id),
            make_event("e", "newbie", {"$set": {"fresh": 1}}, team_id=team_id),
            make_event("$create_alias", "u1", {"alias": "u2", "$set": {"plan": "team"}}, team_id=team_id),
            make_event("e", "u2", {"$set_once": {"plan": "ignored", "via": "u2"}}, team_id=team_id),
            make_event("e", "u1-phone", {"$set_once": {"seats": 1}}, team_id=team_id),
            make_event("e", "bystander", {"$set": {"n": 2}, "$set_once": {"n": 9, "m": 1}}, team_id=team_id),
            make_event("e", "newbie", {"$set_once": {"fresh": 9, "later": 2}}, team_id=team_id),
        ]

    assert await ingest(ingestor, *batch(TEAM_ID)) == [Outcome.INGESTED] * 10
    for event in batch(other_team):
        assert await ingest(ingestor, event) == [Outcome.INGESTED]
    together, one_by_one = await _person_state(pg, TEAM_ID), await _person_state(pg, other_team)
    assert together == one_by_one
    assert together == [
        (
            ["anon-1", "u1", "u1-phone", "u2"],
            {"plan": "team", "seats": 5, "phone": True, "first": "anon", "via": "u2"},
            True,
        ),
        (["bystander"], {"n": 2, "m": 1}, False),
        (["newbie"], {"fresh": 1, "later": 2}, False),
    ]


async def test_person_updates_in_one_batch_apply_in_order(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    """Several `$set`s for one person (through two of its distinct ids) in one batch, with an
    identify in between: the result equals ingesting them one at a time."""
    await make_person(pg, ["a1", "a2"], {"n": 0})
    batch = [
        make_event("e", "a1", {"$set": {"n": 1, "from": "a1"}}),
        make_event("e", "a2", {"$set": {"n": 2}, "$set_once": {"first": "a2", "from": "ignored"}}),
        make_event("$identify", "a2", {"$anon_distinct_id": "b1", "$set": {"n": 3}}),
        make_event("e", "b1", {"$set_once": {"n": 99, "b": True}}),
        make_event("e", "new-one", {"$set": {"fresh": 1}}),
    ]
    assert await ingest(ingestor, *batch) == [Outcome.INGESTED] * 5
    rows = await persons(pg)
    assert [(await distinct_ids_of(pg, p["id"]), p["properties"]) for p in rows] == [
        (["a1", "a2", "b1"], {"n": 3, "from": "a1", "first": "a2", "b": True}),
        (["new-one"], {"fresh": 1}),
    ]


async def test_element_classes_are_stored_and_hashed_sorted(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    """The original builds the elements chain before the element group in Postgres mode too, and
    that sorts each element's classes in place. Hashes computed by the original server."""
    autocapture = [
        {
            "tag_name": "a",
            "$el_text": "Click me",
            "attr__href": "/docs?x=1",
            "attr__class": "btn btn-primary",
            "attr__id": "go",
            "nth_child": 1,
            "nth_of_type": 2,
            "attr__data-attr": 'say "hi"; ok',
            "attr__style": "color: red",
        },
        {"tag_name": "div", "attr__class": "container  main", "nth_child": 3, "nth_of_type": 1},
        {"tag_name": "body", "nth_child": 1, "nth_of_type": 1},
    ]
    unsorted = [{"tag_name": "a", "$el_text": None, "attr__class": "b a"}]
    await ingest(
        ingestor,
        make_event("$autocapture", "el", {"$elements": autocapture}),
        make_event("$autocapture", "el", {"$elements": unsorted}),
    )
    first, second = await events(pg)
    assert first["elements_hash"] == "5fd4645bb2672a9942f7212cb19c335b"
    assert [e.get("attr_class") for e in first["elements"]] == [
        ["btn", "btn-primary"],
        ["", "container", "main"],
        None,
    ]
    assert second["elements_hash"] == "0506af3a71eb60333408e97df795cf01"
    assert second["elements"][0]["attr_class"] == ["a", "b"]
    rows = await pg.fetch("SELECT attr_class FROM posthog_element WHERE attr_class IS NOT NULL ORDER BY id")
    assert [r["attr_class"] for r in rows] == [["btn", "btn-primary"], ["", "container", "main"], ["a", "b"]]


async def test_identify_with_its_own_id_as_anon_id_creates_the_person(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    """Nothing to alias when both ids are the same: the person is created as for any event, with
    `sent_at` as its creation time (seen in the original)."""
    event = make_event("$identify", "user-8", {"$anon_distinct_id": "user-8"})
    assert await ingest(ingestor, event) == [Outcome.INGESTED]
    [person] = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["user-8"]
    assert person["created_at"] == datetime.fromisoformat(event["sent_at"].replace("Z", "+00:00"))
