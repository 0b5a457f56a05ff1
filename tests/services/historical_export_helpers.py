"""What the historical-export tests share: a team's stored events, exporting plugins that post to
a local HTTP server which fails for a while, and starting an export through the job queue."""

from __future__ import annotations

import asyncio
import collections
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from plugin_server.services.historical_export import START_JOB
from plugin_server.services.jobs import EnqueuedJob, GraphileJobQueue
from tests.factories import TEAM_ID, create_plugin, create_plugin_config

START = datetime(2021, 10, 1, tzinfo=UTC)
EVENT_COUNT = 2500
CONFIG_ID = 39

PYTHON_EXPORTER = """
from posthog_plugin import RetryError


async def export_events(events, meta):
    response = await meta.fetch(
        meta.config["url"] + "/batch",
        method="POST",
        json=[[e["properties"].get("seq"), e["timestamp"], e["event"]] for e in events],
    )
    if response.status != 200:
        raise RetryError(f"the warehouse answered {response.status}")
"""

JS_EXPORTER = """
export async function exportEvents(events, { config }) {
    const response = await fetch(config.url + '/batch', {
        method: 'POST',
        body: JSON.stringify(events.map((e) => [e.properties.seq ?? null, e.timestamp, e.event])),
    })
    if (response.status !== 200) {
        throw new RetryError('the warehouse answered ' + response.status)
    }
}
"""


def spread_times(count: int, days: int = 3, seed: int = 16) -> list[datetime]:
    """`count` event times over `days` days: most spread out, a burst of 450 in 5 minutes (pages
    of 100 within one interval), the first and last at the range's ends."""
    rng = random.Random(seed)
    span = days * 86_400_000_000
    burst_at = span // 3
    times = [0, span - 1]
    times += [burst_at + rng.randrange(300_000_000) for _ in range(450)]
    times += [rng.randrange(span) for _ in range(count - len(times))]
    return [START + timedelta(microseconds=t) for t in sorted(times)]


async def store_events(
    pg: asyncpg.Pool, times: list[datetime], *, team_id: int = TEAM_ID, first_seq: int = 0
) -> dict[int, datetime]:
    """posthog_event rows of the team, `properties.seq` numbering them; {seq: timestamp}."""
    rows = [
        (team_id, f"event {seq % 7}", f"user-{seq % 50}", json.dumps({"seq": seq, "$ip": "1.2.3.4"}), moment)
        for seq, moment in enumerate(times, start=first_seq)
    ]
    await pg.executemany(
        "INSERT INTO posthog_event (team_id, event, distinct_id, properties, timestamp, elements_hash)"
        " VALUES ($1, $2, $3, $4::text::jsonb, $5, '')",
        rows,
    )
    return {seq: moment for seq, moment in enumerate(times, start=first_seq)}


@dataclass
class Warehouse:
    """The plugins' destination: fails the first `failures` requests, then records batches."""

    failures: int = 2
    delay: float = 0.0
    received: list[tuple[int, str, str]] = field(default_factory=list)
    refused: int = 0
    others: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        batch = await request.json()
        if self.refused < self.failures:
            self.refused += 1
            return web.Response(status=503, text="asleep")
        if self.delay:
            await asyncio.sleep(self.delay)
        # events the live export sends (the server's own, e.g. $$plugin_metrics) have no seq
        self.received += [(int(seq), str(ts), str(name)) for seq, ts, name in batch if seq is not None]
        self.others += [str(name) for seq, _ts, name in batch if seq is None]
        return web.Response(text="ok")

    def counts(self) -> collections.Counter[int]:
        return collections.Counter(seq for seq, _ts, _name in self.received)


async def add_exporter(pg: asyncpg.Pool, language: str, url: str) -> None:
    source = PYTHON_EXPORTER if language == "python" else JS_EXPORTER
    if language == "python":
        from tests.plugins.conftest import py_source

        source = py_source(source)
    await create_plugin(pg, plugin_id=60, name=f"{language}-exporter", source=source)
    # a buffer that never flushes on its own: only the historical export sends events here
    config = {"url": url, "exportEventsBufferSeconds": "600"}
    await create_plugin_config(pg, config_id=CONFIG_ID, plugin_id=60, config=config)


async def start_export(dsn: str, payload: dict[str, Any] | None = None) -> None:
    """Enqueue the UI's job as PostHog does, through the graphile job queue."""
    queue = GraphileJobQueue(schema="graphile_worker", dsn=dsn)
    try:
        await queue.enqueue(EnqueuedJob(START_JOB, payload or {}, 0, CONFIG_ID, TEAM_ID))
    finally:
        await queue.disconnect()


async def export_running(pg: asyncpg.Pool) -> bool:
    value = await pg.fetchval(
        "SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = $1 AND key = 'is_export_running'",
        CONFIG_ID,
    )
    return value is not None


async def plugin_logs(pg: asyncpg.Pool) -> list[str]:
    rows = await pg.fetch(
        "SELECT message FROM posthog_pluginlogentry WHERE plugin_config_id = $1 AND source = 'SYSTEM'"
        " ORDER BY timestamp, id",
        CONFIG_ID,
    )
    return [r["message"] for r in rows]


Condition = Callable[[], Awaitable[Any]]
