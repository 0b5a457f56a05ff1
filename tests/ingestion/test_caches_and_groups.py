"""Spec scenarios 4.3 (caches), 4.4 (group types) and 53 (element groups) against real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from plugin_server.ingestion.definitions import DefinitionStore, NewDefinitions
from plugin_server.ingestion.elements import extract_elements
from plugin_server.ingestion.groups import GroupTypeStore
from plugin_server.ingestion.persons import SeenDistinctIds
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.ingestion.teams import TeamCache
from plugin_server.ingestion.uuidt import uuidt
from tests.factories import TEAM_ID, create_organization, create_team, create_user
from tests.ingestion.conftest import events, ingest, make_event, make_person, persons


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class QueryCounter:
    """Counts statements the pool's connections run (asyncpg query loggers)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: Any) -> None:
        if not record.query.startswith("SELECT pg_advisory_unlock_all()"):  # the pool's reset on release
            self.queries.append(record.query)


@pytest.fixture
async def counted_pool(pg_dsn: str, team: int) -> AsyncIterator[tuple[asyncpg.Pool, QueryCounter]]:
    from plugin_server.db.postgres import create_pool

    counter = QueryCounter()
    pool = await create_pool(pg_dsn, min_size=1, max_size=1)
    async with pool.acquire() as conn:
        conn.add_query_logger(counter)
    yield pool, counter
    await pool.close()


async def test_4_3_064_065_seen_cache_avoids_queries(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    """Distinct ids with a person are cached after the batch commits; a cached id needs no query.
    Unlike the original, an id is cached only once its person exists (so a failed creation is
    retried by the next event instead of being hidden for an hour)."""
    await make_person(pg, ["1234"])
    await make_person(pg, ["567"])
    seen = ingestor.seen
    assert (TEAM_ID, "1234") not in seen
    await ingest(ingestor, make_event("e", "1234"), make_event("e", "567"), make_event("e", "new-id"))
    assert all((TEAM_ID, d) in seen for d in ("1234", "567", "new-id"))
    assert len(await persons(pg)) == 3
    await ingest(ingestor, make_event("e", "new-id"), make_event("e", "new-id"))
    assert len(await persons(pg)) == 3 and len(await events(pg)) == 5


def test_4_3_064_seen_cache_expires_an_hour_after_last_read() -> None:
    clock = FakeClock()
    seen = SeenDistinctIds(2, clock)
    seen.add_all([(2, "a"), (2, "b")])
    clock.now += 3000
    assert (2, "a") in seen  # refreshed
    clock.now += 3000
    assert (2, "a") in seen and (2, "b") not in seen
    seen.add_all([(2, "c"), (2, "d")])  # capacity 2: least recently used goes
    assert (2, "a") not in seen and (2, "c") in seen and (2, "d") in seen


async def test_4_3_066_team_cache(pg: asyncpg.Pool, team: int) -> None:
    clock = FakeClock()
    cache = TeamCache(pg, clock)
    first = await cache.get(TEAM_ID)
    assert first is not None and first.name == "TEST PROJECT"
    await pg.execute("UPDATE posthog_team SET name = 'Updated Name!' WHERE id = $1", TEAM_ID)
    clock.now += 20
    second = await cache.get(TEAM_ID)
    assert second is not None and second.name == "TEST PROJECT"
    clock.now += 11
    third = await cache.get(TEAM_ID)
    assert third is not None and third.name == "Updated Name!"
    assert await cache.get(-1) is None


async def test_4_3_067_definitions_keep_existing_rows(pg: asyncpg.Pool, team: int) -> None:
    await pg.execute(
        "INSERT INTO posthog_eventdefinition (id, name, team_id, volume_30_day, query_usage_30_day) "
        "VALUES ($1, '$pageview', 2, 3, 2)",
        uuidt(),
    )
    await pg.executemany(
        "INSERT INTO posthog_propertydefinition (id, name, team_id, is_numerical) VALUES ($1, $2, 2, $3)",
        [(uuidt(), "property_name", False), (uuidt(), "numeric_prop", True)],
    )
    store = DefinitionStore(pg)
    await store.load(TEAM_ID)
    new = NewDefinitions()
    store.collect(new, TEAM_ID, "new-event", {"property_name": "efg", "number": 4, "numeric_prop": 5})
    async with pg.acquire() as conn:
        await store.write(conn, new)
    store.committed(new)
    rows = await pg.fetch(
        "SELECT name, volume_30_day, query_usage_30_day FROM posthog_eventdefinition ORDER BY name"
    )
    assert [tuple(r) for r in rows] == [("$pageview", 3, 2), ("new-event", None, None)]
    rows = await pg.fetch("SELECT name, is_numerical FROM posthog_propertydefinition")
    assert [tuple(r) for r in rows] == [("property_name", False), ("numeric_prop", True), ("number", True)]


async def test_4_3_068_069_definitions_need_no_query_when_nothing_is_new(
    counted_pool: tuple[asyncpg.Pool, QueryCounter],
) -> None:
    pool, counter = counted_pool
    store = DefinitionStore(pool)
    await store.load(TEAM_ID)
    new = NewDefinitions()
    store.collect(new, TEAM_ID, "$pageview", {})
    async with pool.acquire() as conn:
        await store.write(conn, new)
    store.committed(new)
    counter.queries.clear()
    await store.load(TEAM_ID)
    store.collect(new := NewDefinitions(), TEAM_ID, "$pageview", {})
    assert not new and counter.queries == []  # 68
    # 69: the name sets only grow; a name inserted elsewhere is inserted again (ignored) once
    await pool.execute(
        "INSERT INTO posthog_eventdefinition (id, name, team_id) VALUES ($1, '$foobar', 2)", uuidt()
    )
    counter.queries.clear()
    store.collect(new := NewDefinitions(), TEAM_ID, "$foobar", {})
    async with pool.acquire() as conn:
        await store.write(conn, new)
    store.committed(new)
    assert len(counter.queries) == 1
    assert await pool.fetchval("SELECT count(*) FROM posthog_eventdefinition WHERE name = '$foobar'") == 1


async def test_4_3_070_first_event_marks_team_ingested(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await pg.execute("UPDATE posthog_team SET ingested_event = false WHERE id = $1", TEAM_ID)
    await ingest(ingestor, make_event("new-event", "someone"))
    assert await pg.fetchval("SELECT ingested_event FROM posthog_team WHERE id = $1", TEAM_ID) is True


# -- 4.4 groups


@pytest.fixture
async def group_types(pg: asyncpg.Pool, team: int) -> GroupTypeStore:
    return GroupTypeStore(pg, FakeClock())


async def test_4_4_071_insert_group_types(group_types: GroupTypeStore) -> None:
    assert await group_types.insert_group_type(TEAM_ID, "g0", 0) == 0
    assert await group_types.insert_group_type(TEAM_ID, "g1", 1) == 1
    assert await group_types.fetch_group_types(TEAM_ID) == {"g0": 0, "g1": 1}


async def test_4_4_072_index_conflicts(group_types: GroupTypeStore) -> None:
    results = [
        await group_types.insert_group_type(TEAM_ID, name, index)
        for name, index in (("g0", 0), ("g1", 0), ("g2", 0), ("g3", 1), ("g4", 0), ("g5", 0), ("g6", 0))
    ]
    assert results == [0, 1, 2, 3, 4, None, None]
    assert await group_types.fetch_group_types(TEAM_ID) == {f"g{i}": i for i in range(5)}


async def test_4_4_073_name_conflicts(group_types: GroupTypeStore) -> None:
    assert [await group_types.insert_group_type(TEAM_ID, "group_name", 0) for _ in range(3)] == [0, 0, 0]
    assert [await group_types.insert_group_type(TEAM_ID, "foo", 0) for _ in range(2)] == [1, 1]
    assert await group_types.fetch_group_types(TEAM_ID) == {"group_name": 0, "foo": 1}


async def test_4_4_074_group_type_cache_lives_30_seconds(pg: asyncpg.Pool, team: int) -> None:
    clock = FakeClock()
    store = GroupTypeStore(pg, clock)
    assert await store.fetch_group_types(TEAM_ID) == {}
    await GroupTypeStore(pg).insert_group_type(TEAM_ID, "foo", 0)
    clock.now += 20
    assert await store.fetch_group_types(TEAM_ID) == {}
    clock.now += 11
    assert await store.fetch_group_types(TEAM_ID) == {"foo": 0}


async def test_4_4_076_fetch_index_registers_new_types(group_types: GroupTypeStore) -> None:
    await group_types.insert_group_type(TEAM_ID, "foo", 0)
    assert await group_types.fetch_group_type_index(TEAM_ID, "second") == 1
    assert await group_types.fetch_group_type_index(TEAM_ID, "third") == 2
    assert await group_types.fetch_group_types(TEAM_ID) == {"foo": 0, "second": 1, "third": 2}


async def test_4_4_077_078_races_with_other_writers(pg: asyncpg.Pool, group_types: GroupTypeStore) -> None:
    assert await group_types.fetch_group_types(TEAM_ID) == {}
    other = GroupTypeStore(pg)
    await other.insert_group_type(TEAM_ID, "foo", 0)
    assert await group_types.fetch_group_type_index(TEAM_ID, "second") == 1
    await other.insert_group_type(TEAM_ID, "bar", 0)  # ends at 2
    cached_empty = GroupTypeStore(pg, FakeClock())
    cached_empty._cache[TEAM_ID] = (1000.0, {})
    assert await cached_empty.fetch_group_type_index(TEAM_ID, "bar") == 2
    assert await group_types.fetch_group_types(TEAM_ID) == {"foo": 0, "second": 1, "bar": 2}


async def test_4_4_079_limit_of_five(group_types: GroupTypeStore) -> None:
    for i in range(5):
        await group_types.insert_group_type(TEAM_ID, f"g{i}", i)
    assert await group_types.fetch_group_type_index(TEAM_ID, "new") is None
    assert await group_types.fetch_group_types(TEAM_ID) == {f"g{i}": i for i in range(5)}


async def test_4_4_080_group_properties(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, group_types: GroupTypeStore
) -> None:
    assert await group_types.add_group_properties(TEAM_ID, {"a": 1}) == {"a": 1}
    for i, name in enumerate(["organization", "project", "x2", "x3", "x4"]):
        await group_types.insert_group_type(TEAM_ID, name, i)
    groups = {"organization": "PostHog", "project": "web", "foobar": "afsafa"}
    await ingest(ingestor, make_event("grouped", "g-user", {"$groups": groups}))
    (event,) = await events(pg)
    assert event["properties"] == {
        "$groups": groups,
        "$group_0": "PostHog",
        "$group_1": "web",
        "$ip": "127.0.0.1",
    }


# -- 53 element groups


async def test_4_2_053_element_groups_per_team_and_deduplicated(
    pg: asyncpg.Pool, ingestor: PostgresIngestor
) -> None:
    other_org = "b2a0f2ec-e9a4-4001-bf27-3ef194086068"
    await create_organization(pg, other_org)
    await create_user(pg, 1002)
    await create_team(pg, 3, organization_id=other_org)
    first = [{"tag_name": "button", "$el_text": "Sign up!"}, {"tag_name": "div"}]
    second = [{"tag_name": "button", "$el_text": "Sign up!"}, {"tag_name": "div", "event": {"id": "blabla"}}]
    await ingest(ingestor, make_event("$autocapture", "e", {"$elements": first}))
    assert [
        r["tag_name"] for r in await pg.fetch('SELECT tag_name FROM posthog_element ORDER BY "order"')
    ] == ["button", "div"]
    await ingest(ingestor, make_event("$autocapture", "e", {"$elements": second}))
    await ingest(ingestor, make_event("$autocapture", "e", {"$elements": first}, team_id=3))
    hashes = {r["elements_hash"] for r in await events(pg)}
    assert len(hashes) == 1
    assert await pg.fetchval("SELECT count(*) FROM posthog_element") == 4
    assert await pg.fetchval("SELECT count(*) FROM posthog_elementgroup") == 2
    assert extract_elements(second)[1] == {"tag_name": "div", "attributes": {}}
