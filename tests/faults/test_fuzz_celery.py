"""Property-based: malformed Celery messages of every shape, mixed with valid ones, through the
real consumer and pipeline (real Postgres and Redis). Whatever they hold, every message is stored
exactly once or dead-lettered exactly once, no batch is retried, and the queue drains."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_server.db.postgres import create_pool
from plugin_server.ingestion.api import NoPlugins
from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.metrics import REGISTRY
from plugin_server.queues.celery import CeleryConsumer
from plugin_server.queues.celery_format import PROCESS_EVENT_TASK, encode_celery_event, encode_task_message
from tests.conftest import _TRUNCATE, REDIS_URL, make_settings
from tests.factories import TEAM_ID, create_team

QUEUE = "posthog-plugins"
NOW = "2021-10-28T12:00:01.123456+00:00"

# Values the stores refuse or the code may trip over, beside what Hypothesis makes up.
ODD_STRINGS = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfff",
        "d" * 500,
        "9" * 40,
        "2021-13-45",
        "99999-01-01T00:00:00Z",
        "$",
    ]
)
ODD_NUMBERS = st.sampled_from([2**31, 2**63, 2**70, -(2**70), 10**30, 1e308, -0.0, 0.5, float("nan")])
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | ODD_STRINGS | ODD_NUMBERS
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | ODD_STRINGS, children, max_size=4)
    ),
    max_leaves=12,
)
EVENT_KEYS = st.sampled_from(
    ["event", "properties", "timestamp", "offset", "uuid", "distinct_id", "sent_at", "now", "team_id", "$set"]
)
PROPERTY_KEYS = st.sampled_from(
    ["$set", "$set_once", "$elements", "$groups", "$anon_distinct_id", "$snapshot_data", "$session_id", "$ip"]
)


@st.composite
def event_data(draw: st.DrawFn) -> Any:
    """The event argument: mostly an object with odd values under the keys the pipeline reads."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    data: dict[str, Any] = draw(st.dictionaries(EVENT_KEYS, JSON, max_size=4))
    if draw(st.booleans()):
        data["properties"] = draw(st.dictionaries(PROPERTY_KEYS | st.text(max_size=6), JSON, max_size=4))
    if draw(st.booleans()):
        data["event"] = draw(
            st.sampled_from(["$identify", "$create_alias", "$snapshot", "$groupidentify", "$autocapture"])
        )
    return data


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:  # not a task message at all
        return draw(
            st.binary(max_size=40) | st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass"))
        )
    if kind == 1:  # JSON, but not an envelope
        return json.dumps(draw(JSON)).encode()
    envelope = json.loads(encode_task_message(PROCESS_EVENT_TASK, [], {}, queue=QUEUE))
    if kind == 2:  # an envelope with a body that is not base64 JSON of a task
        envelope["body"] = draw(
            st.text(max_size=30)
            | st.builds(lambda v: base64.b64encode(json.dumps(v).encode()).decode(), JSON)
        )
        return json.dumps(envelope).encode()
    if kind == 3:  # odd envelope fields
        key = draw(st.sampled_from(["content-type", "content-encoding", "headers", "properties", "body"]))
        envelope[key] = draw(JSON)
        return json.dumps(envelope).encode()
    # a process_event task with odd arguments
    args: list[Any] = [
        draw(JSON | st.text(max_size=10)),
        draw(JSON),
        draw(JSON),
        draw(event_data()),
        draw(st.just(TEAM_ID) | ODD_NUMBERS | JSON),
        draw(st.just(NOW) | JSON),
        draw(st.none() | JSON),
    ]
    if kind == 5:
        args = args[: draw(st.integers(0, 8))]
    return encode_task_message(
        PROCESS_EVENT_TASK, args, draw(st.dictionaries(st.text(max_size=5), JSON, max_size=2)), queue=QUEUE
    ).encode()


def valid(seq: int) -> bytes:
    return encode_celery_event(
        f"user-{seq % 4}",
        "127.0.0.1",
        "http://localhost",
        {"event": "$pageview", "properties": {"seq": seq, "$set_once": {"first": seq}}},
        TEAM_ID,
        NOW,
        None,
        queue=QUEUE,
    ).encode()


def _ingest_retries() -> float:
    return REGISTRY.get_sample_value("plugin_server_celery_errors_total", {"kind": "ingest"}) or 0.0


async def _run(pg_dsn: str, messages: list[bytes], valid_seqs: list[int]) -> None:
    pg = await create_pool(pg_dsn, min_size=1, max_size=4)
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        await pg.execute(_TRUNCATE)
        await create_team(pg, TEAM_ID, ingested_event=True)
        await redis.flushdb()
        ingestor = PostgresIngestor(pg, make_settings(pg_dsn), NoPlugins(), PostgresDeadLetterQueue(pg))
        await ingestor.start()
        consumer = CeleryConsumer(
            redis,
            QUEUE,
            instance_id="fuzz",
            dead_letters=PostgresDeadLetterQueue(pg),
            ingestor=ingestor,
            batch_size=7,
        )
        async with redis.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.lpush(QUEUE, message)
            await pipe.execute()
        retries = _ingest_retries()
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        deadline = time.monotonic() + 60
        while True:
            stored = await pg.fetchval("SELECT count(*) FROM posthog_event")
            dead = await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter")
            if stored + dead >= len(messages) and not await redis.llen(QUEUE):
                break
            assert time.monotonic() < deadline, f"stalled: {stored} stored, {dead} dead of {len(messages)}"
            assert not task.done(), task
            await asyncio.sleep(0.02)
        await consumer.stop()
        await task
        await ingestor.stop()

        seqs = [r[0] for r in await pg.fetch("SELECT properties->>'seq' FROM posthog_event")]
        raws = [bytes(r[0]) for r in await pg.fetch("SELECT raw FROM plugin_server_dead_letter")]
        assert sorted(int(s) for s in seqs if s is not None and s.isdigit()) == sorted(valid_seqs)
        assert len(seqs) + len(raws) == len(messages)  # each message exactly once, one way or the other
        assert len(set(raws)) == len(raws) and set(raws) <= set(messages)
        assert _ingest_retries() == retries  # bad content never failed a batch
        assert await redis.llen(consumer.keys.processing("fuzz")) == 0
    finally:
        await redis.aclose()
        await pg.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(bad=st.lists(malformed(), min_size=1, max_size=12), valid_count=st.integers(1, 10), seed=st.randoms())
def test_malformed_celery_messages_are_each_dead_lettered_or_stored_once(
    pg_dsn: str, bad: list[bytes], valid_count: int, seed: Any
) -> None:
    good = [valid(i) for i in range(valid_count)]
    # each message unique, as every message Celery writes is (its task id)
    messages = list(dict.fromkeys(good + bad))
    seed.shuffle(messages)
    asyncio.run(_run(pg_dsn, messages, list(range(valid_count))))
