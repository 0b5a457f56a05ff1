"""JS plugin costs: per-event time of a trivial processEvent (one call at a time and many in
flight), memory per loaded JS plugin config (V8 heap and process RSS), and the events/s an export
plugin in the style of PostHog's PostgreSQL export reaches into the local Postgres through the
`pg` facade (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres)."""

from __future__ import annotations

import asyncio
import os
import resource
import time
import uuid
from typing import Any

import asyncpg

from plugin_server.plugins.host_services import PluginContext
from plugin_server.plugins.js.isolate import JSError
from plugin_server.plugins.js.transpile import Transpiler
from plugin_server.plugins.js.vm import JSPluginVM, VMSpec
from plugin_server.services.plugin_postgres import PluginPostgres, PostgresFailure

TRIVIAL = "export function processEvent(event) { event.properties.processed = true; return event }"


class NoHost:
    async def call(self, op: str, args: list[Any]) -> Any:
        return None

    def notify(self, op: str, args: list[Any]) -> None:
        return None


EXPORTER = """
import { Pool } from 'pg'
import { RetryError } from '@posthog/plugin-scaffold'
const COLUMNS = ['uuid', 'event', 'properties', 'distinct_id', 'team_id', 'timestamp']
export function setupPlugin({ global, config }) {
    global.pool = new Pool({ connectionString: config.dsn, max: 2 })
}
export async function exportEvents(events, { global, config }) {
    const values = []
    const tuples = []
    for (const e of events) {
        const row = [e.uuid, e.event, JSON.stringify(e.properties), e.distinct_id, e.team_id, e.timestamp]
        tuples.push('(' + row.map((_, i) => '$' + (values.length + i + 1)).join(',') + ')')
        values.push(...row)
    }
    try {
        const insert = `INSERT INTO ${config.table} (${COLUMNS.join(',')}) VALUES ${tuples.join(',')}`
        await global.pool.query(insert, values)
    } catch (error) {
        throw new RetryError('Export to Postgres failed: ' + error.message)
    }
}
"""


class PostgresHost(NoHost):
    """Answers the `pg` facade with the host's PluginPostgres, as ServicesHost does."""

    def __init__(self, service: PluginPostgres) -> None:
        self.service = service
        self.context = PluginContext(plugin_config_id=1, plugin_id=1, team_id=2, plugin_name="bench")

    async def call(self, op: str, args: list[Any]) -> Any:
        handler = self.service.handlers().get(op)
        if handler is None:
            return None
        try:
            return await handler(self.context, *args)
        except PostgresFailure as exc:
            raise JSError("Error", exc.message, props=exc.fields) from None


async def export_to_postgres(transpiler: Transpiler) -> None:
    dsn = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    table = f"bench_js_export_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(
        f"CREATE TABLE {table} (uuid uuid, event text, properties jsonb, distinct_id text,"
        " team_id integer, timestamp timestamptz)"
    )
    service = PluginPostgres(allow_private=True)
    vm = await JSPluginVM.create(
        VMSpec(source=EXPORTER, config={"dsn": dsn, "table": table}), PostgresHost(service), transpiler
    )
    try:
        await vm.call_method("setupPlugin")
        batch_size, batches = 500, 40

        def batch() -> list[dict[str, Any]]:
            return [
                {
                    "uuid": str(uuid.uuid4()),
                    "event": "$pageview",
                    "distinct_id": f"user-{i % 100}",
                    "team_id": 2,
                    "timestamp": "2021-05-01T10:00:00.000Z",
                    "properties": {"$current_url": "https://example.com/", "i": i},
                }
                for i in range(batch_size)
            ]

        await vm.call_method("exportEvents", batch())  # warm up: connection, prepared statement
        work = [batch() for _ in range(batches)]
        started = time.perf_counter()
        for events in work:
            await vm.call_method("exportEvents", events)
        elapsed = time.perf_counter() - started
        stored = await admin.fetchval(f"SELECT count(*) FROM {table}")
        assert stored == batch_size * (batches + 1), stored
        total = batch_size * batches
        rate = total / elapsed
        print(f"export plugin -> local Postgres:    {rate:8.0f} events/s  ({batch_size}-event batches)")
    finally:
        await vm.close()
        await service.stop()
        await admin.execute(f"DROP TABLE {table}")
        await admin.close()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def run() -> None:
    transpiler = Transpiler()
    event = {"event": "e", "distinct_id": "d", "team_id": 2, "properties": {"a": 1, "b": "x" * 100}}
    vm = await JSPluginVM.create(VMSpec(source=TRIVIAL, config={}), NoHost(), transpiler)
    for _ in range(200):
        await vm.call_method("processEvent", event)
    n = 3000
    started = time.perf_counter()
    for _ in range(n):
        await vm.call_method("processEvent", event)
    sequential = (time.perf_counter() - started) / n
    started = time.perf_counter()
    await asyncio.gather(*(vm.call_method("processEvent", event) for _ in range(n)))
    concurrent = (time.perf_counter() - started) / n
    print(f"trivial processEvent, one at a time: {sequential * 1e6:8.1f} µs/event")
    print(f"trivial processEvent, {n} in flight: {concurrent * 1e6:8.1f} µs/event")
    await vm.close()

    count = 20
    before = _rss_mb()
    started = time.perf_counter()
    vms = [
        await JSPluginVM.create(VMSpec(source=TRIVIAL, config={}), NoHost(), transpiler) for _ in range(count)
    ]
    created = (time.perf_counter() - started) / count
    heap = sum(v.memory_used() for v in vms) / count / 2**20
    rss = (_rss_mb() - before) / count
    print(f"create one JS plugin VM:            {created * 1e3:8.1f} ms")
    print(f"V8 heap used per plugin config:     {heap:8.2f} MB")
    print(f"process RSS per plugin config:      {rss:8.2f} MB  ({count} configs)")
    for v in vms:
        await v.close()
    await export_to_postgres(transpiler)
    transpiler.close()


def main(argv: list[str]) -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main([])
