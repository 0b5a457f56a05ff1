"""Celery → Postgres ingestion throughput of the real server (`python -m plugin_server` in a child
process, on a fresh database), fed exactly what Django's capture endpoint pushes.

    python -m bench.ingest_celery [--events 50000] [--scenario plain|mixed|all] [--profile DIR]

Scenarios: `consumer` — the consumer alone, in this process, with an ingestor that discards
(the input side's ceiling); `plain` — 1,000 known users sending $pageview events; `mixed` —
known users, new users, `$identify` and `$set`. Prints events/s and µs/event from the first push
until every event is a row of posthog_event. `--profile DIR` runs the server under cProfile and
writes DIR/<scenario>.prof.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import load_settings
from plugin_server.ingestion.types import IncomingEvent, Outcome
from plugin_server.queues.celery import CeleryConsumer
from plugin_server.queues.celery_format import encode_celery_event

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "posthog-plugins"
TEAM_ID = 2
KNOWN_USERS = 1000
NOW = "2021-10-28T12:00:01.123456+00:00"
SENT_AT = "2021-10-28T12:00:00.500000Z"
PAGEVIEW_PROPERTIES = {
    "$os": "Mac OS X",
    "$browser": "Chrome",
    "$device_type": "Desktop",
    "$current_url": "https://example.com/pricing",
    "$host": "example.com",
    "$pathname": "/pricing",
    "$browser_version": 95,
    "$screen_height": 1120,
    "$screen_width": 1792,
    "$lib": "web",
    "$lib_version": "1.14.3",
    "$referrer": "$direct",
    "$referring_domain": "$direct",
}


def _message(distinct_id: str, data: dict[str, Any]) -> bytes:
    return encode_celery_event(
        distinct_id, "127.0.0.1", "https://app.posthog.com", data, TEAM_ID, NOW, SENT_AT, queue=QUEUE
    ).encode()


def _client_time(seq: int) -> str:
    """An event's own client timestamp, before SENT_AT: one per event, as SDKs send them."""
    moment = datetime(2021, 10, 28, 12, 0, 0, 500000, tzinfo=UTC) - timedelta(milliseconds=abs(seq) + 1)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pageview(distinct_id: str, seq: int, **extra: Any) -> bytes:
    properties = {**PAGEVIEW_PROPERTIES, "distinct_id": distinct_id, "seq": seq, **extra}
    return _message(
        distinct_id, {"event": "$pageview", "properties": properties, "timestamp": _client_time(seq)}
    )


def warmup_messages() -> list[bytes]:
    """One event per known user, so their persons exist before the timed part."""
    return [_pageview(f"user-{u}", -1 - u) for u in range(KNOWN_USERS)]


def plain_messages(count: int) -> list[bytes]:
    return [_pageview(f"user-{i % KNOWN_USERS}", i) for i in range(count)]


def mixed_messages(count: int) -> list[bytes]:
    """Per ten events: 5 known-user pageviews, 2 from new users, 1 $identify of a new anonymous
    id into a known user, 1 with `$set`, 1 custom event with `$set_once`."""
    messages = []
    for i in range(count):
        user = f"user-{i % KNOWN_USERS}"
        kind = i % 10
        if kind < 5:
            messages.append(_pageview(user, i))
        elif kind < 7:
            messages.append(_pageview(f"new-{i}", i))
        elif kind == 7:
            properties = {"$anon_distinct_id": f"anon-{i}", "distinct_id": user, "seq": i, "$lib": "web"}
            messages.append(
                _message(user, {"event": "$identify", "properties": properties, "timestamp": _client_time(i)})
            )
        elif kind == 8:
            messages.append(_pageview(user, i, **{"$set": {"plan": f"plan-{i % 3}", "seen": i}}))
        else:
            properties = {"distinct_id": user, "seq": i, "$set_once": {"first_seen": i}, "button": "buy"}
            messages.append(
                _message(user, {"event": "clicked", "properties": properties, "timestamp": _client_time(i)})
            )
    return messages


# ---------------------------------------------------------------------------------------------- setup


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(f"{admin_url}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = f"{admin_url}/{name}"
    env = dict(os.environ, DATABASE_URL=url, PYTHONPATH=str(ROOT), LOG_LEVEL="warn")
    migrate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "plugin_server", "--migrate", env=env, cwd=ROOT
    )
    if await migrate.wait() != 0:
        raise RuntimeError("migration failed")
    conn = await asyncpg.connect(url)
    try:
        org = "ca30f2ec-e9a4-4001-bf27-3ef194086068"
        await conn.execute(
            "INSERT INTO posthog_organization (id, name, plugins_access_level) VALUES ($1, 'bench', 9)", org
        )
        await conn.execute(
            "INSERT INTO posthog_team (id, uuid, organization_id, api_token, name) "
            "VALUES ($1, gen_random_uuid(), $2, 'bench-token', 'bench')",
            TEAM_ID,
            org,
        )
    finally:
        await conn.close()
    return url


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(f"{admin_url}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


PYTHON_PLUGIN = """# posthog-plugin: python
def process_event(event, meta):
    event["properties"]["bench_py_{n}"] = True
    return event
"""
JS_PLUGIN = """function processEvent(event) {{
    event.properties.bench_js_{n} = true
    return event
}}
"""


async def _install_plugins(url: str, python_plugins: int, js_plugins: int) -> list[str]:
    """Enable a chain of trivial processEvent plugins for the team; returns the marks they set."""
    sources = [("py", PYTHON_PLUGIN.format(n=n)) for n in range(python_plugins)]
    sources += [("js", JS_PLUGIN.format(n=n)) for n in range(js_plugins)]
    conn = await asyncpg.connect(url)
    try:
        org = await conn.fetchval("SELECT organization_id FROM posthog_team WHERE id = $1", TEAM_ID)
        for order, (kind, source) in enumerate(sources):
            plugin_id = await conn.fetchval(
                "INSERT INTO posthog_plugin (organization_id, plugin_type, name, source, config_schema, "
                "capabilities, from_json, from_web, is_global, is_preinstalled, updated_at) "
                "VALUES ($1, 'source', $2, $3, '{}', '{}', false, false, false, false, now()) RETURNING id",
                org,
                f"bench-{kind}-{order}",
                source,
            )
            await conn.execute(
                'INSERT INTO posthog_pluginconfig (team_id, plugin_id, enabled, "order", config) '
                "VALUES ($1, $2, true, $3, '{}')",
                TEAM_ID,
                plugin_id,
                order,
            )
    finally:
        await conn.close()
    return [
        f"bench_{kind}_{n}"
        for kind, count in (("py", python_plugins), ("js", js_plugins))
        for n in range(count)
    ]


@contextlib.contextmanager
def _server(env: dict[str, str], profile_to: Path | None) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "plugin_server"]
    if profile_to is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile_to), "-m", "plugin_server"]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (Linux /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _wait_ready(process: subprocess.Popen[bytes], port: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{err[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_ready", timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise TimeoutError("server did not become ready")


async def _push(redis: aioredis.Redis, messages: list[bytes]) -> None:
    for start in range(0, len(messages), 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for message in messages[start : start + 5000]:
                pipe.lpush(QUEUE, message)
            await pipe.execute()


async def _wait_for_rows(pg: asyncpg.Connection, expected: int, within: float) -> float:
    """Seconds until posthog_event holds `expected` rows (polled every 50 ms).

    A full count(*) scans the whole table (~10 ms at 50,000 rows), which would take a good part
    of a core from Postgres while it is measured; so each poll counts only the rows past the
    highest id seen so far, and a full count confirms at the end. (A row given a lower id but
    committed later is missed by the cheap polls, which can only make the wait longer.)
    """
    started = time.perf_counter()
    counted, last_id = await pg.fetchrow("SELECT count(*), coalesce(max(id), 0) FROM posthog_event")
    while time.perf_counter() - started < within:
        if counted >= expected:
            counted = await pg.fetchval("SELECT count(*) FROM posthog_event")
            if counted >= expected:
                return time.perf_counter() - started
        else:
            new, highest = await pg.fetchrow(
                "SELECT count(*), max(id) FROM posthog_event WHERE id > $1", last_id
            )
            counted, last_id = counted + new, highest or last_id
        await asyncio.sleep(0.05)
    raise TimeoutError(f"fewer than {expected} events stored after {within:.0f} s")


# ----------------------------------------------------------------------------------------------- run


async def run_scenario(name: str, count: int, args: argparse.Namespace) -> dict[str, float]:
    db_name = f"bench_celery_{os.getpid()}_{name}"
    url = await _create_database(args.postgres, db_name)
    marks = await _install_plugins(url, args.python_plugins, args.js_plugins)
    redis = aioredis.Redis.from_url(args.redis)
    pg = await asyncpg.connect(url)
    try:
        await redis.delete(QUEUE)
        port = _free_port()
        env = dict(
            os.environ,
            DATABASE_URL=url,
            REDIS_URL=args.redis,
            HTTP_SERVER_PORT=str(port),
            LOG_LEVEL="warn",
            PYTHONPATH=str(ROOT),
            PLUGINS_CELERY_QUEUE=QUEUE,
            INGESTION_BATCH_SIZE=str(args.batch_size),
        )
        profile_to = Path(args.profile) / f"{name}.prof" if args.profile else None
        if profile_to is not None:
            profile_to.parent.mkdir(parents=True, exist_ok=True)
        messages = plain_messages(count) if name == "plain" else mixed_messages(count)
        with _server(env, profile_to) as process:
            _wait_ready(process, port)
            await _push(redis, warmup_messages())
            await _wait_for_rows(pg, KNOWN_USERS, within=300)
            # Planner statistics, as autovacuum keeps them on a live database (a fresh one gets
            # them within a minute; the timed part would otherwise run on guesses for empty tables).
            await pg.execute("ANALYZE")
            cpu_before, busy_before = _cpu_seconds(process.pid), _machine_busy_seconds()
            started = time.perf_counter()
            await _push(redis, messages)
            await _wait_for_rows(pg, KNOWN_USERS + count, within=1800)
            elapsed = time.perf_counter() - started
            server_cpu = _cpu_seconds(process.pid) - cpu_before
            machine_busy = _machine_busy_seconds() - busy_before
            process.terminate()
            process.wait(timeout=60)
        dead = await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter")
        persons = await pg.fetchval("SELECT count(*) FROM posthog_person")
        for mark in marks:  # every plugin of the chain really ran on the stored events
            marked = await pg.fetchval("SELECT count(*) FROM posthog_event WHERE properties ? $1", mark)
            if marked < count:
                raise RuntimeError(f"only {marked} of {count} events carry {mark}")
    finally:
        await pg.close()
        await redis.aclose()
        await _drop_database(args.postgres, db_name)
    note = (
        f"persons {persons}, dead letters {dead}; server CPU {server_cpu / count * 1e6:.0f} µs/event,"
        f" whole machine busy {machine_busy / elapsed:.2f} of {os.cpu_count()} cores"
    )
    chain = f" +{args.python_plugins} py" * bool(args.python_plugins) + f" +{args.js_plugins} js" * bool(
        args.js_plugins
    )
    return _report(f"celery->postgres {name}{chain}", count, elapsed, note)


class _DiscardingIngestor:
    """Takes batches and keeps nothing: measures the consumer (Redis, parsing, assembly) alone."""

    def __init__(self) -> None:
        self.count = 0
        self.done = asyncio.Event()
        self.expected = 0

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]:
        self.count += len(batch)
        if self.count >= self.expected:
            self.done.set()
        return [Outcome.INGESTED] * len(batch)


class _NoDeadLetters:
    async def record(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"unexpected dead letter: {args[1]}")


async def run_consumer_only(count: int, args: argparse.Namespace) -> dict[str, float]:
    """The consumer in this process with an ingestor that discards: the input side's own ceiling."""
    redis = aioredis.Redis.from_url(args.redis)
    try:
        await redis.delete(QUEUE)
        ingestor = _DiscardingIngestor()
        ingestor.expected = count
        consumer = CeleryConsumer(
            redis,
            QUEUE,
            instance_id=f"bench-{os.getpid()}",
            dead_letters=_NoDeadLetters(),
            ingestor=ingestor,
            batch_size=args.batch_size,
        )
        await consumer.start()
        messages = plain_messages(count)
        await _push(redis, messages)
        started = time.perf_counter()
        task = asyncio.create_task(consumer.run())
        await ingestor.done.wait()
        elapsed = time.perf_counter() - started
        await consumer.stop()
        await task
    finally:
        await redis.aclose()
    return _report("celery consumer alone", count, elapsed, "take, parse, assemble; ingestor discards")


def _report(label: str, count: int, elapsed: float, note: str) -> dict[str, float]:
    rate, micros = count / elapsed, elapsed / count * 1e6
    print(
        f"{label:<24} {count:>7} events {elapsed:7.2f} s {rate:>9,.0f} events/s"
        f" {micros:7.1f} µs/event  ({note})",
        flush=True,
    )
    return {"events": count, "seconds": elapsed, "events_per_s": rate, "us_per_event": micros}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest_celery", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--scenario", choices=("plain", "mixed", "consumer", "all"), default="all")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=load_settings({}).ingestion_batch_size,
        help="INGESTION_BATCH_SIZE of the server",
    )
    parser.add_argument(
        "--postgres", default=os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
    )
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--profile", default=None, help="directory for cProfile output of the server")
    parser.add_argument(
        "--python-plugins", type=int, default=0, help="chain this many trivial Python processEvent plugins"
    )
    parser.add_argument(
        "--js-plugins", type=int, default=0, help="chain this many trivial JS processEvent plugins"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    scenarios = ["consumer", "plain", "mixed"] if args.scenario == "all" else [args.scenario]
    for name in scenarios:
        if name == "consumer":
            asyncio.run(run_consumer_only(args.events, args))
        else:
            asyncio.run(run_scenario(name, args.events, args))


if __name__ == "__main__":
    main(sys.argv[1:])
