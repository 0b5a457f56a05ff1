"""Postgres-mode ingestion throughput: `PostgresIngestor.ingest` on batches of plain events from
known users (no plugins), on a scratch database migrated from scratch. Prints events/s, with and
without the bookkeeping that makes storage effectively once (each message's id remembered in the
batch's transaction, as for Celery messages), in alternating runs."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from plugin_server.config import load_settings
from plugin_server.db.migrate import migrate
from plugin_server.db.postgres import create_pool
from plugin_server.ingestion.api import NoPlugins
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.ingestion.types import IncomingEvent, PluginEvent
from plugin_server.ingestion.uuidt import uuidt

ROOT = "postgres://postgres@127.0.0.1:5432"
DATABASE = "bench_ingestion_postgres"


class DiscardDeadLetters:
    count = 0

    async def record(
        self,
        raw: bytes | str | None,
        error: str,
        stage: str,
        team_id: int | None = None,
        event: object = None,
        *,
        message_id: bytes | None = None,
    ) -> None:
        self.count += 1


def _event(distinct_id: str, now: str, i: int, remember: bool = False) -> IncomingEvent:
    event: PluginEvent = {
        "distinct_id": distinct_id,
        "ip": "127.0.0.1",
        "site_url": "https://app.posthog.com",
        "team_id": 2,
        "now": now,
        "sent_at": now,
        "uuid": uuidt(),
        "event": "$pageview",
        "properties": {
            "$current_url": f"https://example.com/page/{i % 50}",
            "$lib": "web",
            "$browser": "Chrome",
        },
        "timestamp": now,
    }
    message_id = os.urandom(16) if remember else None
    return IncomingEvent(team_id=2, event=event, raw=b"", source="celery", message_id=message_id)


async def run(total: int, batch_size: int, users: int, rounds: int) -> None:
    admin = await asyncpg.connect(f"{ROOT}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await admin.close()
    dsn = f"{ROOT}/{DATABASE}"
    await migrate(dsn)
    pool = await create_pool(dsn)
    organization = uuid.uuid4()
    await pool.execute("INSERT INTO posthog_organization (id, name) VALUES ($1, 'bench')", organization)
    await pool.execute(
        "INSERT INTO posthog_team (id, uuid, organization_id, api_token, name, ingested_event) "
        "VALUES (2, $1, $2, 'token', 'bench', true)",
        uuid.uuid4(),
        organization,
    )
    settings = load_settings({"NODE_ENV": "test"}, database_url=dsn)
    ingestor = PostgresIngestor(pool, settings, NoPlugins(), DiscardDeadLetters())
    await ingestor.start()
    now = datetime.now(UTC).isoformat()
    # Warm-up: every user gets a person and the caches fill.
    warm = [_event(f"user-{u}", now, u) for u in range(users)]
    for start in range(0, len(warm), batch_size):
        await ingestor.ingest(warm[start : start + batch_size])
    # Planner statistics, as autovacuum keeps them on a live database.
    await pool.execute("ANALYZE")
    figures: dict[bool, list[float]] = {False: [], True: []}
    for remember in (False, True) * rounds:
        batches = [
            [_event(f"user-{(b * batch_size + i) % users}", now, i, remember) for i in range(batch_size)]
            for b in range(total // batch_size)
        ]
        started = time.perf_counter()
        for batch in batches:
            await ingestor.ingest(batch)
        elapsed = time.perf_counter() - started
        figures[remember].append(total / elapsed)
        label = "with message bookkeeping   " if remember else "without message bookkeeping"
        print(
            f"known users, plain events, {label}: {total} events in batches of {batch_size}: "
            f"{elapsed:.2f} s, {total / elapsed:,.0f} events/s"
        )
    stored = await pool.fetchval("SELECT count(*) FROM posthog_event")
    remembered = await pool.fetchval("SELECT count(*) FROM plugin_server_ingested_message")
    without, with_ = statistics.median(figures[False]), statistics.median(figures[True])
    print(
        f"median of {rounds} runs each: without {without:,.0f}, with {with_:,.0f} events/s "
        f"({(1 - with_ / without) * 100:+.1f} % cost; "
        f"{stored} rows stored, {remembered} message ids remembered)"
    )
    await ingestor.stop()
    await pool.close()
    admin = await asyncpg.connect(f"{ROOT}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await admin.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.ingestion_postgres")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs with and without bookkeeping")
    args = parser.parse_args(argv)
    asyncio.run(run(args.events, args.batch, args.users, args.rounds))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
