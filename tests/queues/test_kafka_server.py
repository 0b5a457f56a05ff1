"""Kafka mode inside the real server: events produced as Django produces them come out on the
ClickHouse topics; two servers share a 6-partition topic as one consumer group; a server killed
with SIGKILL mid-stream loses nothing (spec/ingestion.md §1.2)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.ingestion import kafka_messages as km
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.queues.celery_format import encode_celery_event
from tests.conftest import REDIS_URL
from tests.factories import capture_message, create_team
from tests.kafka_broker import free_port
from tests.kafka_topics import TopicTail, ensure_topics, produce
from tests.server_process import server_env, server_process, wait_ready
from tests.waiting import wait_for

CELERY_QUEUE = "posthog-plugins"
NOW = "2021-10-28T12:00:01.123456+00:00"


def django_value(event_uuid: str, seq: int) -> bytes:
    return capture_message(
        event_uuid, seq, distinct_id=f"user-{seq % 40}", properties={"$current_url": "https://example.com/"}
    )


def uuids_out(messages: list[Any]) -> Counter[str]:
    return Counter(km.decode_event_proto(m.value)["uuid"] for m in messages)


async def test_kafka_mode_server_ingests_and_dead_letters(
    settings_factory: Callable[..., Settings],
    run_server: Any,
    pg: asyncpg.Pool,
    redis: aioredis.Redis,
    kafka_bootstrap: str,
) -> None:
    await create_team(pg)
    # In Kafka mode the Celery list carries plugin jobs only: an event task there is not ingested.
    celery_event = encode_celery_event(
        "user-x", "127.0.0.1", "", {"event": "via celery", "properties": {}}, 2, NOW, NOW, queue=CELERY_QUEUE
    )
    await redis.lpush(CELERY_QUEUE, celery_event)
    topic = f"events_plugin_ingestion_{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [topic], 2)
    settings = settings_factory(
        kafka_enabled=True, kafka_hosts=kafka_bootstrap, kafka_consumption_topic=topic, http_server_port=0
    )
    uuids = [uuidt() for _ in range(30)]
    async with TopicTail(kafka_bootstrap, [km.TOPIC_EVENTS, km.TOPIC_DEAD_LETTER_QUEUE]) as tail:
        async with run_server(settings) as server:
            # A new group starts at the end of the topic: produce once it has joined.
            await wait_for(lambda: _consumer_ready(server), within=40)
            values = [django_value(u, i) for i, u in enumerate(uuids)] + [b"{oops"]
            await produce(kafka_bootstrap, topic, values)
            await tail.read(km.TOPIC_EVENTS, 30, within=40)
            [dead] = await tail.read(km.TOPIC_DEAD_LETTER_QUEUE, 1, within=10)
        out = await tail.settle(0.5)
    assert uuids_out(out[km.TOPIC_EVENTS]) == Counter(uuids)
    stored = km.decode_event_proto(out[km.TOPIC_EVENTS][0].value)
    assert stored["team_id"] == 2 and stored["event"] == "$pageview"
    assert json.loads(stored["properties"])["$ip"] == "127.0.0.1"
    assert json.loads(dead.value)["raw_payload"] == "{oops"
    assert await redis.llen(CELERY_QUEUE) == 0
    rejected = await pg.fetchrow("SELECT stage, error FROM plugin_server_dead_letter")
    assert rejected["stage"] == "celery_parse"
    assert rejected["error"] == (
        "Missing process handler for task posthog.tasks.process_event.process_event_with_plugins"
    )
    # Postgres mode's tables stay empty; persons are in Postgres in both modes.
    assert await pg.fetchval("SELECT count(*) FROM posthog_event") == 0
    assert await pg.fetchval("SELECT count(*) FROM posthog_persondistinctid") == 30  # user-0 .. user-29
    assert await pg.fetchval("SELECT count(*) FROM posthog_person") == 30


async def test_two_servers_share_the_topic_and_a_killed_one_loses_nothing(
    pg_dsn: str, pg: asyncpg.Pool, kafka_bootstrap: str, clickhouse_host: str
) -> None:
    await create_team(pg)
    topic = f"events_plugin_ingestion_{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [topic], 6)
    env = server_env(
        DATABASE_URL=pg_dsn,
        REDIS_URL=REDIS_URL,
        KAFKA_ENABLED="true",
        KAFKA_HOSTS=kafka_bootstrap,
        KAFKA_CONSUMPTION_TOPIC=topic,
        CLICKHOUSE_HOST=clickhouse_host,  # readiness includes ClickHouse in Kafka mode
        INGESTION_BATCH_SIZE="200",
        LOG_LEVEL="warn",
    )
    first_env = dict(env, HTTP_SERVER_PORT=str(free_port()))
    second_env = dict(env, HTTP_SERVER_PORT=str(free_port()))
    normal = [uuidt() for _ in range(3000)]
    crash = [uuidt() for _ in range(3000)]
    async with TopicTail(kafka_bootstrap, [km.TOPIC_EVENTS]) as tail:
        with server_process(first_env) as first, server_process(second_env) as second:
            wait_ready(first, int(first_env["HTTP_SERVER_PORT"]), timeout=60)
            wait_ready(second, int(second_env["HTTP_SERVER_PORT"]), timeout=60)

            # Normal running: every event exactly once.
            await produce(kafka_bootstrap, topic, [django_value(u, i) for i, u in enumerate(normal)])
            await tail.read(km.TOPIC_EVENTS, len(normal), within=90)
            seen = uuids_out((await tail.settle(1.0))[km.TOPIC_EVENTS])
            assert set(seen) == set(normal)
            assert [u for u, n in seen.items() if n > 1] == []

            # SIGKILL one server while events keep coming.
            async def produce_slowly() -> None:
                for start in range(0, len(crash), 100):
                    chunk = crash[start : start + 100]
                    await produce(
                        kafka_bootstrap, topic, [django_value(u, start + i) for i, u in enumerate(chunk)]
                    )
                    await asyncio.sleep(0.05)

            producing = asyncio.create_task(produce_slowly())
            await tail.read(km.TOPIC_EVENTS, len(normal) + 500, within=60)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            await producing
            await wait_for(lambda: _all_out(tail, set(normal) | set(crash)), within=120)
            assert second.poll() is None
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
        out = uuids_out((await tail.settle(0.5))[km.TOPIC_EVENTS])
    assert set(crash) <= set(out)  # none lost
    duplicates = sum(n - 1 for u, n in out.items() if u in set(crash))
    assert duplicates <= 6 * 200  # at most the batches in flight on the killed server


async def _consumer_ready(server: Any) -> bool:
    server._readiness_cache = None
    return "kafka-consumer" not in await server.readiness()


async def _all_out(tail: TopicTail, expected: set[str]) -> bool:
    messages = (await tail.settle(0.2))[km.TOPIC_EVENTS]
    return expected <= set(uuids_out(messages))
