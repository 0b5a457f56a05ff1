"""Messages whose content no store accepts, through the Celery consumer and the real Postgres
pipeline: each is dead-lettered exactly once at the first attempt, the valid messages around it
are stored once, and the queue drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.ingestion.api import NoPlugins
from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.metrics import REGISTRY
from plugin_server.queues.celery import CeleryConsumer
from plugin_server.queues.celery_format import PROCESS_EVENT_TASK, encode_task_message
from tests.factories import TEAM_ID, create_team
from tests.queues.test_celery_consumer import QUEUE, consuming, push, wait_until

NOW = "2021-10-28T12:00:01.123456+00:00"


def task(
    data: Any, *, team_id: Any = TEAM_ID, distinct_id: Any = "user-1", now: Any = NOW, sent_at: Any = None
) -> str:
    args = [distinct_id, "127.0.0.1", "http://localhost", data, team_id, now, sent_at]
    return encode_task_message(PROCESS_EVENT_TASK, args, {}, queue=QUEUE)


def valid(seq: int) -> str:
    return task({"event": "$pageview", "properties": {"seq": seq}}, distinct_id=f"user-{seq % 5}")


# Each of these is odd for its content alone (most cannot be stored). The ids say what is odd.
POISON: dict[str, str] = {
    "team_id_2_70": task({"event": "e"}, team_id=2**70),
    "team_id_int64_overflow": task({"event": "e"}, team_id=2**63),
    "team_id_negative_huge": task({"event": "e"}, team_id=-(2**70)),
    "team_id_unknown_int4": task({"event": "e"}, team_id=2**31 - 1),
    "team_id_string": task({"event": "e"}, team_id="2"),
    "timestamp_year_99999": task({"event": "e", "timestamp": "99999-01-01T00:00:00Z"}),
    "timestamp_huge_number": task({"event": "e", "timestamp": 10**30}),
    "timestamp_list": task({"event": "e", "timestamp": [1, 2]}),
    "offset_int64_overflow": task({"event": "e", "offset": 2**70}),
    "now_not_a_time": task({"event": "e"}, now={"a": 1}),
    "sent_at_huge": task({"event": "e"}, sent_at=2**80),
    "nul_in_distinct_id": task({"event": "e"}, distinct_id="a\x00b"),
    "nul_in_event_name": task({"event": "e\x00"}),
    "nul_in_property_key": task({"event": "e", "properties": {"k\x00": 1}}),
    "surrogate_in_event_name": task({"event": "e\ud800"}),
    "surrogate_in_distinct_id": task({"event": "e"}, distinct_id="x\udfff"),
    "surrogate_in_property": task({"event": "e", "properties": {"k": "v\ud800"}}),
    "surrogate_in_set": task({"event": "e", "properties": {"$set": {"k\udc00": "v"}}}),
    "distinct_id_too_long": task({"event": "e"}, distinct_id="d" * 500),
    "properties_a_list": task({"event": "e", "properties": [1, 2]}),
    "properties_a_string": task({"event": "e", "properties": "p"}),
    "set_a_list": task({"event": "e", "properties": {"$set": [["a", 1]]}}),
    "set_once_a_string": task({"event": "e", "properties": {"$set_once": "x"}}),
    "elements_not_objects": task({"event": "$autocapture", "properties": {"$elements": [[1, 2], "x"]}}),
    "elements_a_dict": task({"event": "$autocapture", "properties": {"$elements": {"a": 1}}}),
    "groups_a_list": task({"event": "e", "properties": {"$groups": [1]}}),
    "uuid_a_number": task({"event": "e", "uuid": 12}),
    "identify_anon_id_dict": task({"event": "$identify", "properties": {"$anon_distinct_id": {"a": 1}}}),
    "data_a_list": task([1, 2]),
}


@pytest.fixture
async def pipeline(pg: asyncpg.Pool, settings: Settings) -> AsyncIterator[PostgresIngestor]:
    await create_team(pg, TEAM_ID, ingested_event=True)
    ingestor = PostgresIngestor(pg, settings, NoPlugins(), PostgresDeadLetterQueue(pg))
    await ingestor.start()
    yield ingestor
    await ingestor.stop()


def retries() -> float:
    return REGISTRY.get_sample_value("plugin_server_celery_errors_total", {"kind": "ingest"}) or 0.0


@pytest.mark.parametrize("name", sorted(POISON))
async def test_a_poison_message_is_dead_lettered_once_and_the_rest_stored_once(
    name: str, pg: asyncpg.Pool, redis: aioredis.Redis, pipeline: PostgresIngestor
) -> None:
    before = retries()
    await push(redis, [valid(0), valid(1), POISON[name], valid(2), valid(3)])
    consumer = CeleryConsumer(
        redis,
        QUEUE,
        instance_id=f"poison-{name}",
        dead_letters=PostgresDeadLetterQueue(pg),
        ingestor=pipeline,
    )

    async def settled() -> bool:
        stored = await pg.fetchval("SELECT count(*) FROM posthog_event")
        dead = await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter")
        return stored + dead >= 5

    async with consuming(consumer):
        await wait_until(settled, 30)
        await asyncio.sleep(0)  # a retry would be under way by now if the batch had failed
    seqs = [r["seq"] for r in await pg.fetch("SELECT properties->>'seq' AS seq FROM posthog_event")]
    dead = await pg.fetch("SELECT error, team_id, raw FROM plugin_server_dead_letter")
    assert sorted(s for s in seqs if s is not None) == ["0", "1", "2", "3"]
    # Some are odd but storable (the original took them too); either way, exactly once.
    assert len(dead) + seqs.count(None) == 1, [r["error"] for r in dead]
    if name.startswith("team_id") or dead:
        assert len(dead) == 1
        assert bytes(dead[0]["raw"]).decode() == POISON[name]
        assert dead[0]["error"]
    assert retries() == before  # classified at the first attempt, never a failed batch
    assert await redis.llen(QUEUE) == 0
    assert await redis.llen(consumer.keys.processing(consumer.instance_id)) == 0


async def test_an_out_of_range_team_id_is_kept_as_null_with_its_value_in_the_error(pg: asyncpg.Pool) -> None:
    await PostgresDeadLetterQueue(pg).record(b"raw", "unknown team", "stage", 2**70, {"team_id": 2**70})
    row = await pg.fetchrow("SELECT error, team_id, event FROM plugin_server_dead_letter")
    assert row["team_id"] is None
    assert row["error"] == f"unknown team (team_id {2**70} not storable)"
    assert row["event"] == {"team_id": 2**70}


@pytest.mark.parametrize(
    "event", [{"v": float("nan")}, {"v": "\ud800"}, {"v": "\x00"}, {"v": object()}], ids=str
)
async def test_a_dead_letter_is_stored_whatever_its_event_holds(pg: asyncpg.Pool, event: Any) -> None:
    await PostgresDeadLetterQueue(pg).record("raw \ud800 \x00", "why \ud800", "stage \x00", 2, event)
    row = await pg.fetchrow("SELECT stage, error, team_id, raw FROM plugin_server_dead_letter")
    assert row["team_id"] == 2
    assert row["stage"] == "stage \\u0000"
    assert row["error"].startswith("why \\ud800")
