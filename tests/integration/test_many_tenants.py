"""Many organizations with one Python plugin each, events round-robin through the running server:
every event is processed by its own organization's plugin, the live sandboxes never exceed the
cap, and the process's memory stays within budget.

Sized for CI: on CPython 3.13.0 a destroyed sub-interpreter does not give its memory back (about
6 MB each, docs/plugin-sandbox.md), so each sandbox started beyond the cap adds to the process for
good; 60 organizations over a cap of 15 start about 120 sandboxes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.queues.celery_format import encode_celery_event
from tests.integration.conftest import QUEUE, runner_of, wait_until
from tests.plugins.conftest import py_source

ORGANIZATIONS = 60
CAP = 15
BUDGET_MB = 2048
MARKER = """
def process_event(event, meta):
    event["properties"]["marked_by"] = meta.config["org"]
    return event
"""


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def create_tenants(pg: asyncpg.Pool) -> list[int]:
    orgs = [uuid.uuid4() for _ in range(ORGANIZATIONS)]
    teams = list(range(1000, 1000 + ORGANIZATIONS))
    async with pg.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO posthog_organization (id, name, plugins_access_level) VALUES ($1, $2, 9)",
            [(org, f"org {n}") for n, org in enumerate(orgs)],
        )
        await conn.executemany(
            "INSERT INTO posthog_team (id, uuid, organization_id, api_token, name)"
            " VALUES ($1, $2, $3, $4, 'team')",
            [(team, uuid.uuid4(), org, f"token-{team}") for team, org in zip(teams, orgs, strict=True)],
        )
        await conn.executemany(
            "INSERT INTO posthog_plugin (id, organization_id, plugin_type, name, description,"
            " config_schema, tag, source) VALUES ($1, $2, 'source', $3, '', '{}', '0.0.1', $4)",
            [(team, org, f"marker-{team}", py_source(MARKER)) for team, org in zip(teams, orgs, strict=True)],
        )
        await conn.executemany(
            'INSERT INTO posthog_pluginconfig (id, team_id, plugin_id, enabled, "order", config)'
            " VALUES ($1, $1, $1, true, 0, $2)",
            [(team, {"org": str(org)}) for team, org in zip(teams, orgs, strict=True)],
        )
    return teams


def event_for(team: int, seq: int) -> bytes:
    return encode_celery_event(
        f"user-{seq}",
        "127.0.0.1",
        "http://localhost",
        {"event": "round robin", "uuid": str(uuid.uuid4()), "properties": {"seq": seq}},
        team,
        "2021-10-28T12:00:01.123456+00:00",
        "2021-10-28T12:00:00.500000Z",
        queue=QUEUE,
    ).encode()


async def test_organizations_round_robin_within_the_sandbox_cap(
    pg: asyncpg.Pool, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    teams = await create_tenants(pg)
    orgs = dict(await pg.fetch("SELECT id, organization_id::text FROM posthog_team"))
    baseline = rss_mb()
    peak = {"rss": baseline, "alive": 0}
    server_settings = settings.replace(worker_concurrency=1, sandbox_max_alive=CAP, ingestion_batch_size=250)
    async with run_server(server_settings) as server:
        pool = runner_of(server).pool

        async def sample() -> None:
            while True:
                peak["rss"] = max(peak["rss"], rss_mb())
                peak["alive"] = max(peak["alive"], len(pool.sandboxes), pool.slots_used)
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        try:
            rounds = 1
            events = [
                event_for(team, r * ORGANIZATIONS + i) for r in range(rounds) for i, team in enumerate(teams)
            ]
            await redis.lpush(QUEUE, *events)  # consumed from the right: in round-robin order

            async def stored() -> bool:
                count = await pg.fetchval("SELECT count(*) FROM posthog_event")
                return bool(count == len(events))

            await wait_until(stored, within=240)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        assert pool.peak_alive <= CAP
        assert pool.started >= ORGANIZATIONS  # every organization had sandboxes of its own
        started = pool.started

    rows = await pg.fetch("SELECT team_id, properties->>'marked_by' AS mark FROM posthog_event")
    assert len(rows) == ORGANIZATIONS
    assert all(row["mark"] == orgs[row["team_id"]] for row in rows)  # each by its own org's plugin
    assert peak["alive"] <= CAP
    assert peak["rss"] < BUDGET_MB
    # what sandboxes add: about 10 MB per sandbox started (CPython 3.13.0 keeps a destroyed
    # interpreter's memory), with slack for the server itself
    assert peak["rss"] - baseline < started * 12 + 300, (baseline, peak, started)
