"""Scaling out on one machine: N server processes (`python -m plugin_server`) share the work, and
events/s is printed against N.

    python -m bench.scale_out [--events 30000] [--processes 1,2,3] [--mode celery|kafka|all]

Celery mode: the N processes take batches off one Celery list in Redis (each its own processing
list), with one trivial Python plugin; the clock runs from the first push until every event is a
row of posthog_event. Kafka mode: the N processes join one consumer group on a 6-partition input
topic filled beforehand; the clock runs from the first start until the group has committed every
input offset. Each process runs WORKER_CONCURRENCY sandboxes; on a machine with C cores, more
processes than C only share the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import ingest_celery as celery_bench
from bench import ingest_kafka as kafka_bench
from bench.machine import reference_ms

ROOT = celery_bench.ROOT


@contextlib.contextmanager
def _servers(count: int, env: dict[str, str]) -> Iterator[list[int]]:
    """`count` server processes with the same settings but their own probe port; yields the ports."""
    ports = [celery_bench._free_port() for _ in range(count)]
    with contextlib.ExitStack() as stack:
        processes = [
            stack.enter_context(celery_bench._server(dict(env, HTTP_SERVER_PORT=str(port)), None))
            for port in ports
        ]
        for process, port in zip(processes, ports, strict=True):
            celery_bench._wait_ready(process, port)
        yield ports


def _base_env(database_url: str, redis_url: str, workers: int) -> dict[str, str]:
    return dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        LOG_LEVEL="warn",
        PYTHONPATH=str(ROOT),
        WORKER_CONCURRENCY=str(workers),
    )


async def run_celery(processes: int, count: int, args: argparse.Namespace) -> float:
    db_name = f"bench_scale_{os.getpid()}_{processes}"
    url = await celery_bench._create_database(args.postgres, db_name)
    await celery_bench._install_plugins(url, 1, 0)
    redis = aioredis.Redis.from_url(args.redis)
    pg = await asyncpg.connect(url)
    try:
        await redis.delete(celery_bench.QUEUE)
        env = dict(_base_env(url, args.redis, args.workers), PLUGINS_CELERY_QUEUE=celery_bench.QUEUE)
        with _servers(processes, env):
            await celery_bench._push(redis, celery_bench.warmup_messages())
            await celery_bench._wait_for_rows(pg, celery_bench.KNOWN_USERS, within=300)
            await pg.execute("ANALYZE")
            started = time.perf_counter()
            await celery_bench._push(redis, celery_bench.plain_messages(count))
            await celery_bench._wait_for_rows(pg, celery_bench.KNOWN_USERS + count, within=1800)
            elapsed = time.perf_counter() - started
        stored = await pg.fetchval("SELECT count(*) FROM posthog_event")
        if stored != celery_bench.KNOWN_USERS + count:
            raise RuntimeError(f"{stored} rows for {celery_bench.KNOWN_USERS + count} events")
    finally:
        await pg.close()
        await redis.aclose()
        await celery_bench._drop_database(args.postgres, db_name)
    return count / elapsed


async def _committed(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=kafka_bench.GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        total = 0
        for partition in range(kafka_bench.PARTITIONS):
            offset = await consumer.committed(TopicPartition(kafka_bench.TOPIC, partition))
            total += offset or 0
        return total
    finally:
        await consumer.stop()


async def run_kafka(processes: int, count: int, args: argparse.Namespace) -> float:
    dsn = await kafka_bench._database()
    with kafka_bench._broker() as bootstrap:
        await kafka_bench._fill(bootstrap, [kafka_bench._value(i, 1000) for i in range(count)])
        env = dict(
            _base_env(dsn, args.redis, args.workers),
            KAFKA_ENABLED="true",
            KAFKA_HOSTS=bootstrap,
            KAFKA_CONSUMPTION_TOPIC=kafka_bench.TOPIC,
        )
        started = time.perf_counter()
        with _servers(processes, env):
            deadline = started + 1800
            while (done := await _committed(bootstrap)) < count:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{done} of {count} events committed")
                await asyncio.sleep(0.2)
            elapsed = time.perf_counter() - started
    return count / elapsed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--processes", default="1,2,3", help="comma-separated process counts")
    parser.add_argument("--workers", type=int, default=1, help="WORKER_CONCURRENCY of each process")
    parser.add_argument("--mode", choices=("celery", "kafka", "all"), default="all")
    parser.add_argument(
        "--postgres", default=os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
    )
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.processes.split(",")]
    modes = ["celery", "kafka"] if args.mode == "all" else [args.mode]
    print(f"machine: reference workload {reference_ms():.0f} ms (bench/machine.py; lower is faster)")
    print(f"{os.cpu_count()} cores, {args.events} events, WORKER_CONCURRENCY={args.workers} per process")
    runners: dict[str, Any] = {"celery": run_celery, "kafka": run_kafka}
    for mode in modes:
        for n in counts:
            rate = asyncio.run(runners[mode](n, args.events, args))
            print(f"{mode:<7} {n} process{'es' if n > 1 else '  '} {rate:>9,.0f} events/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
