"""Spec scenarios 4.1 (process-event) in Postgres mode, at the `PostgresIngestor.ingest` level."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.ingestion.identify import merge_people
from plugin_server.ingestion.persons import fetch_person
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.ingestion.types import Outcome
from tests.factories import TEAM_ID, create_organization, create_team, create_user
from tests.ingestion.conftest import (
    dead_letter_rows,
    distinct_ids_of,
    events,
    ingest,
    ingest_one,
    make_event,
    make_person,
    person_of,
    persons,
)

TOKEN = "THIS IS NOT A TOKEN FOR TEAM 2"


async def test_4_1_01_merge_people_directly(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    p0 = await make_person(
        pg, ["person_0"], {"$os": "Microsoft"}, created_at=datetime(2020, 1, 1, tzinfo=UTC)
    )
    p1 = await make_person(
        pg, ["person_1"], {"$os": "Chrome", "$browser": "Chrome"}, created_at=datetime(2019, 7, 1, tzinfo=UTC)
    )
    assert await ingest_one(ingestor, make_event("user signed up", "person_1")) is Outcome.INGESTED
    async with pg.acquire() as conn, conn.transaction():
        into = await fetch_person(conn, TEAM_ID, "person_0")
        other = await fetch_person(conn, TEAM_ID, "person_1")
        assert into is not None and other is not None and (into.id, other.id) == (p0, p1)
        await merge_people(conn, into, "person_0", other, "person_1", identify=False)
    (person,) = await persons(pg)
    assert person["properties"] == {"$os": "Microsoft", "$browser": "Chrome"}
    assert await distinct_ids_of(pg, person["id"]) == ["person_0", "person_1"]
    assert person["created_at"] == datetime(2019, 7, 1, tzinfo=UTC)


AUTOCAPTURE_ELEMENTS = [
    {"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"},
    {"tag_name": "div", "nth_child": 1, "nth_of_type": 2, "$el_text": "💻"},
]


def _autocapture_2() -> dict[str, object]:
    return {
        "distinct_id": 2,
        "token": TOKEN,
        "$browser": "Chrome",
        "$current_url": "https://test.com",
        "$os": "Mac OS X",
        "$browser_version": False,
        "$initial_referring_domain": "https://google.com",
        "$initial_referrer_url": "https://google.com/?q=posthog",
        "utm_medium": "twitter",
        "gclid": "GOOGLE ADS ID",
        "$elements": AUTOCAPTURE_ELEMENTS,
    }


async def test_4_1_02_to_04_autocapture_person_and_definitions(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    now = datetime.now(UTC)
    await ingest(ingestor, make_event("$autocapture", "2", _autocapture_2(), now=now))
    (person,) = await persons(pg)
    first_props = {
        "$initial_browser": "Chrome",
        "$initial_browser_version": False,
        "$initial_utm_medium": "twitter",
        "$initial_current_url": "https://test.com",
        "$initial_os": "Mac OS X",
        "utm_medium": "twitter",
        "$initial_gclid": "GOOGLE ADS ID",
        "gclid": "GOOGLE ADS ID",
    }
    assert person["properties"] == first_props
    assert await distinct_ids_of(pg, person["id"]) == ["2"]
    (event,) = await events(pg)
    assert event["event"] == "$autocapture" and event["distinct_id"] == "2"
    assert event["properties"] == {
        "$ip": "127.0.0.1",
        "$os": "Mac OS X",
        "$set": {"utm_medium": "twitter", "gclid": "GOOGLE ADS ID"},
        "token": TOKEN,
        "$browser": "Chrome",
        "$set_once": {
            "$initial_os": "Mac OS X",
            "$initial_browser": "Chrome",
            "$initial_utm_medium": "twitter",
            "$initial_current_url": "https://test.com",
            "$initial_browser_version": False,
            "$initial_gclid": "GOOGLE ADS ID",
        },
        "utm_medium": "twitter",
        "distinct_id": 2,
        "$current_url": "https://test.com",
        "$browser_version": False,
        "gclid": "GOOGLE ADS ID",
        "$initial_referrer_url": "https://google.com/?q=posthog",
        "$initial_referring_domain": "https://google.com",
    }
    assert event["elements_hash"] == "0679137c0cd2408a2906839143e7a71f"
    elements = await pg.fetch('SELECT * FROM posthog_element ORDER BY "order"')
    assert elements[0]["tag_name"] == "a" and elements[0]["attr_class"] == ["btn", "btn-sm"]
    assert elements[1]["order"] == 1 and elements[1]["text"] == "💻"

    # 3: campaign values update, initial ones do not
    props = {
        "distinct_id": 2,
        "token": TOKEN,
        "utm_medium": "instagram",
        "$current_url": "https://test.com/pricing",
        "$browser_version": 80,
        "$browser": "Firefox",
        "$elements": AUTOCAPTURE_ELEMENTS,
    }
    await ingest(ingestor, make_event("$autocapture", "2", props, now=now + timedelta(seconds=1)))
    assert len(await events(pg)) == 2 and len(await persons(pg)) == 1
    (person,) = await persons(pg)
    assert person["properties"] == {**first_props, "utm_medium": "instagram"}
    second = (await events(pg))[1]
    assert second["properties"]["$set"] == {"utm_medium": "instagram"}
    assert second["properties"]["$set_once"] == {
        "$initial_browser": "Firefox",
        "$initial_browser_version": 80,
        "$initial_utm_medium": "instagram",
        "$initial_current_url": "https://test.com/pricing",
    }

    # 4: without $browser_version
    del props["$browser_version"]
    await ingest(ingestor, make_event("$autocapture", "2", props, now=now + timedelta(seconds=2)))
    third = (await events(pg))[2]
    assert third["properties"]["$set_once"] == {
        "$initial_browser": "Firefox",
        "$initial_utm_medium": "instagram",
        "$initial_current_url": "https://test.com/pricing",
    }
    event_defs = await pg.fetch("SELECT * FROM posthog_eventdefinition")
    assert [(d["name"], d["team_id"], d["volume_30_day"], d["query_usage_30_day"]) for d in event_defs] == [
        ("$autocapture", TEAM_ID, None, None)
    ]
    prop_defs = await pg.fetch("SELECT name, is_numerical FROM posthog_propertydefinition")
    assert [(d["name"], d["is_numerical"]) for d in prop_defs] == [
        ("distinct_id", True),
        ("token", False),
        ("$browser", False),
        ("$current_url", False),
        ("$os", False),
        ("$browser_version", False),
        ("$initial_referring_domain", False),
        ("$initial_referrer_url", False),
        ("utm_medium", False),
        ("gclid", False),
        ("$ip", False),
    ]


async def test_4_1_05_initial_current_url_without_campaign(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    await ingest(
        ingestor,
        make_event("$pageview", "2", {"distinct_id": 2, "token": TOKEN, "$current_url": "https://test.com"}),
    )
    (person,) = await persons(pg)
    assert person["properties"] == {"$initial_current_url": "https://test.com"}


async def test_4_1_06_unknown_team_is_dead_lettered(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue
) -> None:
    bad = make_event("$pageview", "x", team_id=1337)
    good = make_event("$pageview", "y")
    assert await ingest(ingestor, bad, good) == [Outcome.DEAD_LETTERED, Outcome.INGESTED]
    (record,) = await dead_letter_rows(pg)
    assert record["error"] == "No team found with ID 1337. Can't ingest event."
    assert record["event"]["uuid"] == bad["uuid"] and record["stage"] == "plugin_server_ingest_event"
    assert [e["distinct_id"] for e in await events(pg)] == ["y"]


async def test_4_1_07_event_without_elements(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    person_id = await make_person(pg, ["asdfasdfasdf"])
    await ingest(ingestor, make_event("$pageview", "asdfasdfasdf", {"distinct_id": "asdfasdfasdf"}))
    (event,) = await events(pg)
    assert event["elements_hash"] == "" and event["elements"] == []
    assert await distinct_ids_of(pg, person_id) == ["asdfasdfasdf"]


async def test_4_1_08_09_clock_skew_correction(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["skewed"])
    t0 = datetime.now(UTC).replace(microsecond=0)
    timestamp = t0 + timedelta(days=1, hours=2)
    sent_at = t0 + timedelta(days=1, hours=2, minutes=10)
    await ingest(
        ingestor,
        make_event(
            "$pageview", "skewed", now=t0, timestamp=timestamp.isoformat(), sent_at=sent_at.isoformat()
        ),
    )
    plus4 = timezone_plus_4()
    await ingest(
        ingestor,
        make_event(
            "$pageview",
            "skewed",
            now=t0,
            timestamp=timestamp.astimezone(plus4).isoformat(),
            sent_at=sent_at.astimezone(plus4).isoformat(),
        ),
    )
    for event in await events(pg):
        difference = (t0 - event["timestamp"]).total_seconds()
        assert 590 <= difference <= 610


def timezone_plus_4():  # type: ignore[no-untyped-def]
    from datetime import timezone

    return timezone(timedelta(hours=4))


async def test_4_1_10_no_sent_at(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    t0 = datetime.now(UTC)
    timestamp = t0 + timedelta(days=1, hours=2)
    await ingest(
        ingestor, make_event("$pageview", "a", now=t0, sent_at=None, timestamp=timestamp.isoformat())
    )
    (event,) = await events(pg)
    assert abs((event["timestamp"] - timestamp).total_seconds()) < 1


@pytest.mark.parametrize(
    ("scenario", "ip", "properties", "anonymize", "expected"),
    [
        ("11_ip_absent", None, {}, False, None),
        ("12_ip_captured", "11.12.13.14", {}, False, "11.12.13.14"),
        ("13_ip_not_overridden", "11.12.13.14", {"$ip": "1.0.0.1"}, False, "1.0.0.1"),
        ("14_anonymized", "11.12.13.14", {}, True, None),
    ],
)
async def test_4_1_11_to_14_ip(
    pg: asyncpg.Pool,
    ingestor: PostgresIngestor,
    scenario: str,
    ip: str | None,
    properties: dict[str, str],
    anonymize: bool,
    expected: str | None,
) -> None:
    await pg.execute("UPDATE posthog_team SET anonymize_ips = $1 WHERE id = $2", anonymize, TEAM_ID)
    await ingest(ingestor, make_event("$pageview", "ip-user", properties, ip=ip))
    (event,) = await events(pg)
    assert event["properties"].get("$ip") == expected
    assert ("$ip" in event["properties"]) == (expected is not None)


async def _alias(ingestor: PostgresIngestor, distinct_id: str, alias: str) -> None:
    assert (
        await ingest_one(ingestor, make_event("$create_alias", distinct_id, {"alias": alias}))
        is Outcome.INGESTED
    )


async def test_4_1_15_alias_to_existing(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["old_distinct_id"])
    await _alias(ingestor, "new_distinct_id", "old_distinct_id")
    assert len(await events(pg)) == 1
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["old_distinct_id", "new_distinct_id"]


async def test_4_1_16_alias_reverse(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["old_distinct_id"])
    await _alias(ingestor, "old_distinct_id", "new_distinct_id")
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["old_distinct_id", "new_distinct_id"]


async def test_4_1_17_alias_twice(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["old_distinct_id"])
    await _alias(ingestor, "new_distinct_id", "old_distinct_id")
    await make_person(pg, ["old_distinct_id_2"])
    assert len(await persons(pg)) == 2
    await _alias(ingestor, "new_distinct_id", "old_distinct_id_2")
    assert len(await events(pg)) == 2
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == [
        "old_distinct_id",
        "new_distinct_id",
        "old_distinct_id_2",
    ]


async def test_4_1_18_alias_before_any_person(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await _alias(ingestor, "new_distinct_id", "old_distinct_id")
    assert len(await events(pg)) == 1
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["new_distinct_id", "old_distinct_id"]
    assert person["is_identified"] is False


async def test_4_1_19_alias_both_existing(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["old_distinct_id"])
    await make_person(pg, ["new_distinct_id"])
    await _alias(ingestor, "new_distinct_id", "old_distinct_id")
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["old_distinct_id", "new_distinct_id"]


@pytest.mark.parametrize("sent_at", ["now", None], ids=["20_with_sent_at", "21_without_sent_at"])
async def test_4_1_20_21_offset(pg: asyncpg.Pool, ingestor: PostgresIngestor, sent_at: str | None) -> None:
    now = datetime(2020, 1, 1, 12, 0, 5, 200000, tzinfo=UTC)
    await ingest(ingestor, make_event("$autocapture", "offset-user", now=now, sent_at=sent_at, offset=150))
    (event,) = await events(pg)
    assert event["timestamp"] == datetime(2020, 1, 1, 12, 0, 5, 50000, tzinfo=UTC)


async def test_4_1_22_alias_merges_properties(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["old_distinct_id"], {"key_on_both": "old value both", "key_on_old": "old value"})
    await make_person(pg, ["new_distinct_id"], {"key_on_both": "new value both", "key_on_new": "new value"})
    await _alias(ingestor, "new_distinct_id", "old_distinct_id")
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["old_distinct_id", "new_distinct_id"]
    assert person["properties"] == {
        "key_on_both": "new value both",
        "key_on_new": "new value",
        "key_on_old": "old value",
    }


async def test_4_1_23_long_element_text_and_href(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    element = {
        "tag_name": "a",
        "$el_text": "a" * 2050,
        "attr__href": "a" * 2050,
        "nth_child": 1,
        "nth_of_type": 2,
        "attr__class": "btn btn-sm",
    }
    await ingest(ingestor, make_event("$autocapture", "el", {"$elements": [element]}))
    (row,) = await pg.fetch("SELECT * FROM posthog_element")
    assert len(row["href"]) == 2048 and len(row["text"]) == 400
    (event,) = await events(pg)
    assert event["elements_hash"] == "c2659b28e72835706835764cf7f63c2a"


async def test_4_1_24_first_event_of_team(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await pg.execute("UPDATE posthog_team SET ingested_event = false WHERE id = $1", TEAM_ID)
    element = {"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"}
    await ingest(ingestor, make_event("$autocapture", "2", {"$elements": [element]}))
    assert await pg.fetchval("SELECT ingested_event FROM posthog_team WHERE id = $1", TEAM_ID) is True
    (event,) = await events(pg)
    assert event["elements_hash"] == "a89021a60b3497d24e93ae181fba01aa"


async def test_4_1_25_26_snapshot(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    now = datetime.now(UTC)
    snapshot = make_event(
        "$snapshot", "some_new_id", {"$session_id": "abcf-efg", "$snapshot_data": {"timestamp": 123}}, now=now
    )
    assert await ingest_one(ingestor, snapshot) is Outcome.INGESTED
    assert await events(pg) == []
    (recording,) = await pg.fetch("SELECT * FROM posthog_sessionrecordingevent")
    assert recording["session_id"] == "abcf-efg" and recording["distinct_id"] == "some_new_id"
    assert recording["snapshot_data"] == {"timestamp": 123}
    assert recording["created_at"] == recording["timestamp"]
    assert len(await persons(pg)) == 1  # 26: the snapshot created the person


async def test_4_1_27_identify_with_set(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["distinct_id1"])
    first = {"distinct_id": "distinct_id1", "$set": {"a_prop": "test-1", "c_prop": "test-1"}}
    await ingest(ingestor, make_event("$identify", "distinct_id1", first))
    (event,) = await events(pg)
    assert event["properties"]["$set"] == first["$set"]
    person = await person_of(pg, "distinct_id1")
    assert person is not None
    assert await distinct_ids_of(pg, person["id"]) == ["distinct_id1"]
    assert person["properties"] == {"a_prop": "test-1", "c_prop": "test-1"}
    assert person["is_identified"] is False
    second = {"distinct_id": "distinct_id1", "$set": {"a_prop": "test-2", "b_prop": "test-2b"}}
    await ingest(ingestor, make_event("$identify", "distinct_id1", second))
    assert len(await events(pg)) == 2
    person = await person_of(pg, "distinct_id1")
    assert person is not None
    assert person["properties"] == {"a_prop": "test-2", "b_prop": "test-2b", "c_prop": "test-1"}


async def test_4_1_28_identify_with_set_once(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["distinct_id1"])
    first = {"distinct_id": "distinct_id1", "$set_once": {"a_prop": "test-1", "c_prop": "test-1"}}
    await ingest(ingestor, make_event("$identify", "distinct_id1", first))
    person = await person_of(pg, "distinct_id1")
    assert person is not None and person["properties"] == {"a_prop": "test-1", "c_prop": "test-1"}
    second = {"distinct_id": "distinct_id1", "$set_once": {"a_prop": "test-2", "b_prop": "test-2b"}}
    await ingest(ingestor, make_event("$identify", "distinct_id1", second))
    person = await person_of(pg, "distinct_id1")
    assert person is not None
    assert person["properties"] == {"a_prop": "test-1", "b_prop": "test-2b", "c_prop": "test-1"}
    assert person["is_identified"] is False


async def test_4_1_29_illegal_distinct_ids_block_merging(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    await make_person(pg, ["im an anonymous id"])
    for count, illegal in enumerate(["distinctId", "  ", "NaN", "undefined", "None", "0"], start=2):
        await make_person(pg, [illegal])
        await ingest(ingestor, make_event("$identify", illegal, {"$anon_distinct_id": "im an anonymous id"}))
        assert len(await persons(pg)) == count
    await make_person(pg, ["Nan"])
    await ingest(ingestor, make_event("$identify", "Nan", {"$anon_distinct_id": "im an anonymous id"}))
    assert len(await persons(pg)) == 7


async def test_4_1_30_identify_anonymous_person(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["anonymous_id"])
    properties = {"$anon_distinct_id": "anonymous_id", "$set": {"a_prop": "test"}}
    event = make_event("$identify", "new_distinct_id", properties)
    await ingest(ingestor, event)
    (stored,) = await events(pg)
    assert stored["properties"]["$set"] == {"a_prop": "test"}
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["anonymous_id", "new_distinct_id"]
    assert person["properties"] == {"a_prop": "test"} and person["is_identified"] is True
    assert (
        await ingest_one(ingestor, make_event("$identify", "new_distinct_id", properties)) is Outcome.INGESTED
    )


async def test_4_1_31_33_identify_merges_created_persons(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    await make_person(pg, ["anonymous_id"])
    await make_person(pg, ["new_distinct_id"], {"email": "someone@gmail.com"})
    await ingest(ingestor, make_event("$identify", "new_distinct_id", {"$anon_distinct_id": "anonymous_id"}))
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["anonymous_id", "new_distinct_id"]
    assert person["properties"] == {"email": "someone@gmail.com"} and person["is_identified"] is True
    # 33: another anonymous person folds into the identified one
    await make_person(pg, ["anonymous_id_2"])
    await ingest(
        ingestor, make_event("$identify", "new_distinct_id", {"$anon_distinct_id": "anonymous_id_2"})
    )
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["anonymous_id", "new_distinct_id", "anonymous_id_2"]
    assert person["properties"] == {"email": "someone@gmail.com"} and person["is_identified"] is True


async def test_4_1_32_identify_with_itself(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["anonymous_id"])
    await ingest(ingestor, make_event("$identify", "anonymous_id", {"$anon_distinct_id": "anonymous_id"}))
    (person,) = await persons(pg)
    assert await distinct_ids_of(pg, person["id"]) == ["anonymous_id"]
    assert person["is_identified"] is False


async def test_4_1_34_no_cross_team_leakage(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    other_org = "b2a0f2ec-e9a4-4001-bf27-3ef194086068"
    await create_organization(pg, other_org)
    await create_user(pg, 1002)
    await create_team(pg, 3, organization_id=other_org)
    team3_person = await make_person(pg, ["2"], {"email": "team2@gmail.com"}, team_id=3)
    await make_person(pg, ["1", "2"])
    await ingest(ingestor, make_event("$identify", "2", {"$anon_distinct_id": "1"}))
    assert len(await persons(pg)) == 2
    team2_person = await person_of(pg, "2")
    assert team2_person is not None and team2_person["properties"] == {}
    assert await distinct_ids_of(pg, team2_person["id"]) == ["1", "2"]
    assert await distinct_ids_of(pg, team3_person) == ["2"]


class Client:
    """The client helpers of scenarios 35-42: send / identify / alias with a current distinct id."""

    def __init__(self, ingestor: PostgresIngestor) -> None:
        self.ingestor = ingestor
        self.state = "anonymous_id"
        self.clock = datetime.now(UTC)

    async def send(self, name: str, properties: dict[str, object] | None = None) -> None:
        properties = dict(properties or {})
        self.clock += timedelta(seconds=1)
        distinct_id = properties.get("distinct_id") or self.state
        event = make_event(name, distinct_id, properties, now=self.clock)
        assert await ingest_one(self.ingestor, event) is Outcome.INGESTED

    async def identify(self, distinct_id: str) -> None:
        previous, self.state = self.state, distinct_id
        await self.send("$identify", {"$anon_distinct_id": previous, "distinct_id": distinct_id})

    async def alias(self, alias: str) -> None:
        await self.send("$create_alias", {"alias": alias})


async def _persons_with_events(pg: asyncpg.Pool) -> list[tuple[list[str], list[str], bool]]:
    result = []
    for person in await persons(pg):
        ids = await distinct_ids_of(pg, person["id"])
        rows = await pg.fetch(
            "SELECT event FROM posthog_event WHERE distinct_id = ANY($1::text[]) ORDER BY timestamp", ids
        )
        result.append((ids, [r["event"] for r in rows], person["is_identified"]))
    return result


async def test_4_1_35_no_re_aliasing_of_identified_users(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    client = Client(ingestor)
    await client.send("event 1")
    await client.identify("initial_distinct_id")
    await client.send("event 2")
    client.state = "p2_distinct_id"
    await client.send("event 3")
    await client.identify("new_distinct_id")
    await client.send("event 4")
    await client.identify("initial_distinct_id")
    assert await _persons_with_events(pg) == [
        (["anonymous_id", "initial_distinct_id"], ["event 1", "$identify", "event 2", "$identify"], True),
        (["p2_distinct_id", "new_distinct_id"], ["event 3", "$identify", "event 4"], True),
    ]


async def test_4_1_36_no_re_aliasing_without_anonymous_event(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    client = Client(ingestor)
    await client.identify("initial_distinct_id")
    await client.send("event 2")
    client.state = "p2_distinct_id"
    await client.send("event 3")
    await client.identify("new_distinct_id")
    await client.send("event 4")
    await client.identify("initial_distinct_id")
    assert await _persons_with_events(pg) == [
        (["initial_distinct_id", "anonymous_id"], ["$identify", "event 2", "$identify"], True),
        (["p2_distinct_id", "new_distinct_id"], ["event 3", "$identify", "event 4"], True),
    ]


async def test_4_1_37_identify_in_one_batch_refuses_merging_identified(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    """The nested identify of scenario 37 arrives in the same batch, right after the first: the
    person created identified by the first one is not merged away by the second."""
    await ingest(ingestor, make_event("some event", "new-distinct-id"))
    first = make_event("$identify", "initial-distinct-id", {"$anon_distinct_id": "anonymous_id"})
    nested = make_event("$identify", "new-distinct-id", {"$anon_distinct_id": "initial-distinct-id"})
    assert await ingest(ingestor, first, nested) == [Outcome.INGESTED, Outcome.INGESTED]
    rows = await persons(pg)
    assert len(rows) == 2 and all(p["is_identified"] for p in rows)


async def test_4_1_38_alias_identified_to_identified(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    client = Client(ingestor)
    await client.identify("identified_id1")
    client.state = "identified_id1"
    await client.send("some event")
    await client.identify("identified_id2")
    await client.alias("identified_id1")
    ((ids, names, identified),) = await _persons_with_events(pg)
    assert sorted(ids) == ["anonymous_id", "identified_id1", "identified_id2"]
    assert names == ["$identify", "some event", "$identify", "$create_alias"] and identified


@pytest.mark.parametrize(
    "alias", ["anonymous_id", "initial_distinct_id"], ids=["39_anon_to_identified", "40_identified_to_anon"]
)
async def test_4_1_39_40_alias_with_identified(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, alias: str
) -> None:
    client = Client(ingestor)
    await client.identify("initial_distinct_id")
    client.state = "anonymous_id"
    await client.send("anonymous event")
    await client.alias(alias)
    assert await _persons_with_events(pg) == [
        (["initial_distinct_id", "anonymous_id"], ["$identify", "anonymous event", "$create_alias"], True)
    ]


async def test_4_1_41_alias_anonymous_to_anonymous(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    client = Client(ingestor)
    client.state = "anonymous-1"
    await client.send("anonymous event 1")
    client.state = "anonymous-2"
    await client.send("anonymous event 2")
    await client.alias("anonymous-1")
    ((ids, names, identified),) = await _persons_with_events(pg)
    assert sorted(ids) == ["anonymous-1", "anonymous-2"]
    assert names == ["anonymous event 1", "anonymous event 2", "$create_alias"] and not identified


async def test_4_1_42_alias_two_unknown_ids(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    client = Client(ingestor)
    client.state = "anonymous-1"
    await client.alias("anonymous-2")
    assert await _persons_with_events(pg) == [(["anonymous-1", "anonymous-2"], ["$create_alias"], False)]


async def test_4_1_43_definitions_from_plain_event(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await ingest(ingestor, make_event("purchase", "xxx", {"price": 299.99, "name": "AirPods Pro"}))
    assert [r["name"] for r in await pg.fetch("SELECT name FROM posthog_eventdefinition")] == ["purchase"]
    rows = await pg.fetch("SELECT name, is_numerical FROM posthog_propertydefinition")
    assert [(r["name"], r["is_numerical"]) for r in rows] == [
        ("price", True),
        ("name", False),
        ("$ip", False),
    ]


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ({"event name": "as object"}, '{"event name":"as object"}'),
        (["event name", "a list"], '["event name","a list"]'),
        ("E" * 300, "E" * 200),
    ],
    ids=["44_object", "45_array", "46_long"],
)
async def test_4_1_44_to_46_event_names(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, name: object, stored: str
) -> None:
    await ingest(ingestor, make_event(name, "names"))
    (event,) = await events(pg)
    assert event["event"] == stored


async def test_4_1_47_bad_uuid(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, dead_letters: PostgresDeadLetterQueue
) -> None:
    outcomes = await ingest(
        ingestor, make_event(uuid="this is not an uuid"), make_event(uuid=None), make_event("fine")
    )
    assert outcomes == [Outcome.DEAD_LETTERED, Outcome.DEAD_LETTERED, Outcome.INGESTED]
    assert [r["error"] for r in await dead_letter_rows(pg)] == [
        'Not a valid UUID: "this is not an uuid"',
        'Not a valid UUID: "null"',
    ]
    assert [e["event"] for e in await events(pg)] == ["fine"]


@pytest.mark.parametrize("existing", [True, False], ids=["48_existing_person", "49_new_person"])
async def test_4_1_48_49_set_from_any_event(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, existing: bool
) -> None:
    if existing:
        await make_person(pg, ["distinct_id1"])
    set_props = {"a_prop": "test-1", "c_prop": "test-1"}
    await ingest(ingestor, make_event("some_event", "distinct_id1", {"$set": set_props}))
    (event,) = await events(pg)
    assert event["properties"]["$set"] == set_props
    (person,) = await persons(pg)
    assert person["properties"] == set_props
    assert await distinct_ids_of(pg, person["id"]) == ["distinct_id1"]


async def test_4_1_50_set_once_from_any_event(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["distinct_id1"])
    await ingest(
        ingestor,
        make_event("some_event", "distinct_id1", {"$set_once": {"a_prop": "test-1", "c_prop": "test-1"}}),
    )
    await ingest(
        ingestor,
        make_event("some_event", "distinct_id1", {"$set_once": {"a_prop": "test-2", "b_prop": "test-2b"}}),
    )
    (person,) = await persons(pg)
    assert person["properties"] == {"a_prop": "test-1", "b_prop": "test-2b", "c_prop": "test-1"}


async def test_4_1_51_top_level_set_merge(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await make_person(pg, ["distinct_id1"])
    event = make_event(
        "some_event",
        "distinct_id1",
        {
            "token": TOKEN,
            "distinct_id": "distinct_id1",
            "$set": {"key2": "value3", "key3": "value4"},
            "$set_once": {"key2_once": "value3", "key3_once": "value4"},
        },
        **{
            "$set": {"key1": "value1", "key2": "value2"},
            "$set_once": {"key1_once": "value1", "key2_once": "value2"},
        },
    )
    await ingest(ingestor, event)
    (stored,) = await events(pg)
    assert stored["properties"]["$set"] == {"key1": "value1", "key2": "value2", "key3": "value4"}
    assert stored["properties"]["$set_once"] == {
        "key1_once": "value1",
        "key2_once": "value2",
        "key3_once": "value4",
    }
    (person,) = await persons(pg)
    assert person["properties"] == {
        "key1": "value1",
        "key2": "value2",
        "key3": "value4",
        "key1_once": "value1",
        "key2_once": "value2",
        "key3_once": "value4",
    }


async def group_type_mapping(pg: asyncpg.Pool) -> list[tuple[str, int]]:
    rows = await pg.fetch(
        "SELECT group_type, group_type_index FROM posthog_grouptypemapping ORDER BY group_type_index"
    )
    return [(r["group_type"], r["group_type_index"]) for r in rows]


async def test_4_1_52_groupidentify_stores_event_and_group_type_only_in_postgres_mode(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    await make_person(pg, ["distinct_id1"])
    properties = {"$group_type": "organization", "$group_key": "org::5", "$group_set": {"foo": "bar"}}
    await ingest(ingestor, make_event("$groupidentify", "distinct_id1", properties))
    assert len(await events(pg)) == 1
    (person,) = await persons(pg)
    assert person["properties"] == {}
    # upsert_group (§2.10) registers the type, the team's first at index 0; no group row
    assert await group_type_mapping(pg) == [("organization", 0)]


async def test_groupidentify_group_types_in_postgres_mode(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    await make_person(pg, ["d"])
    identify = [
        {"$group_type": "organization", "$group_key": "o1"},
        {"$group_type": "organization", "$group_key": "o2"},  # known type: same index
        {"$group_type": "project", "$group_key": ""},  # no key: nothing registered
        {"$group_key": "k"},  # no type
        {"$group_type": 7, "$group_key": "k"},  # a number reads as its JavaScript text
    ]
    for properties in identify:
        await ingest(ingestor, make_event("$groupidentify", "d", properties))
    await ingest(ingestor, make_event("grouped", "d", {"$groups": {"instance": "i1", "organization": "o1"}}))
    for i in range(3):
        await ingest(ingestor, make_event("$groupidentify", "d", {"$group_type": f"t{i}", "$group_key": "k"}))
    assert len(await events(pg)) == 9
    # five types at most: t2 finds no free index and is not registered
    assert await group_type_mapping(pg) == [
        ("organization", 0),
        ("7", 1),
        ("instance", 2),
        ("t0", 3),
        ("t1", 4),
    ]
    grouped = await pg.fetchval("SELECT properties FROM posthog_event WHERE event = 'grouped'")
    assert grouped["$group_2"] == "i1" and grouped["$group_0"] == "o1"
