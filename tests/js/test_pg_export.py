"""The `pg` facade against the machine's Postgres: an export plugin in the style of PostHog's
PostgreSQL export plugin, node-postgres' results and errors, and the host's policies."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from plugin_server.metrics import REGISTRY
from plugin_server.plugins.host_services import PluginContext
from plugin_server.plugins.runner import PluginRunner
from plugin_server.services.plugin_postgres import PluginPostgres, PostgresFailure
from tests.js.conftest import Loader

EXPORT_PLUGIN = """
import { Client } from 'pg'
import { RetryError } from '@posthog/plugin-scaffold'

type Row = [string, string, string, string, number, string]
const COLUMNS = ['uuid', 'event', 'properties', 'distinct_id', 'team_id', 'timestamp']

function sanitizeSqlIdentifier(name: string): string {
    return name.replace(/[^\\w\\d_]+/g, '')
}

export async function setupPlugin({ global, config }) {
    global.table = sanitizeSqlIdentifier(config.tableName)
    global.clientConfig = {
        host: config.host, port: parseInt(config.port), user: config.user,
        password: config.password || undefined, database: config.databaseName,
        connectionTimeoutMillis: 5000,
    }
}

async function executeQuery(config: any, text: string, values: any[] = []) {
    const client = new Client(config)
    await client.connect()
    try {
        return await client.query(text, values)
    } finally {
        await client.end()
    }
}

export async function exportEvents(events, { global }) {
    const values: any[] = []
    const tuples: string[] = []
    for (const event of events) {
        const row: Row = [event.uuid, event.event, JSON.stringify(event.properties || {}),
                          event.distinct_id, event.team_id, event.timestamp]
        tuples.push('(' + row.map((_, i) => '$' + (values.length + i + 1)).join(', ') + ')')
        values.push(...row)
    }
    try {
        await executeQuery(global.clientConfig, `CREATE TABLE IF NOT EXISTS ${global.table} (
            uuid varchar(200), event varchar(200), properties jsonb, distinct_id varchar(200),
            team_id integer, timestamp timestamp with time zone)`)
        await executeQuery(global.clientConfig,
            `INSERT INTO ${global.table} (${COLUMNS.join(', ')}) VALUES ${tuples.join(', ')}`, values)
    } catch (error) {
        throw new RetryError(`Export to Postgres failed: ${error.message}`)
    }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def forwarder(port: int, target_host: str, target_port: int) -> AsyncIterator[None]:
    """A TCP listener on `port` that relays to Postgres: the target coming up late."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


@pytest.fixture
def postgres_service(runner: PluginRunner) -> PluginPostgres:
    """`pg.*` on the runner's request channel, loopback allowed (the target is this machine)."""
    service = PluginPostgres(allow_private=True)
    for name, handler in service.handlers().items():
        runner.services.register(name, handler)
    return service


@pytest.fixture
async def stop_postgres_service(postgres_service: PluginPostgres) -> AsyncIterator[PluginPostgres]:
    yield postgres_service
    await postgres_service.stop()


def export_config(pg_dsn: str, port: int) -> dict[str, Any]:
    url = urlsplit(pg_dsn)
    return {
        "host": "127.0.0.1",
        "port": str(port),
        "user": url.username or "postgres",
        "databaseName": url.path.lstrip("/"),
        "tableName": "posthog_event_export; DROP TABLE x",
    }


def events(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "uuid": f"00000000-0000-0000-0000-{i:012d}",
            "event": "$pageview",
            "distinct_id": f"user-{i % 3}",
            "team_id": 2,
            "timestamp": f"2021-03-0{1 + i % 9}T10:00:00.000Z",
            "properties": {"n": i, "url": "https://example.com/café"},
        }
        for i in range(start, start + count)
    ]


async def test_export_plugin_retries_until_the_target_listens(
    load_plugin: Loader, stop_postgres_service: PluginPostgres, pg: asyncpg.Pool, pg_dsn: str
) -> None:
    port = free_port()
    plugin = await load_plugin(EXPORT_PLUGIN, config=export_config(pg_dsn, port))
    assert plugin.loaded.exports is not None

    refused = await plugin.call("export_events", events(3))
    assert not refused.ok and refused.error is not None
    assert refused.error["name"] == "RetryError" and refused.error["retry"] is True
    assert refused.error["message"] == f"Export to Postgres failed: connect ECONNREFUSED 127.0.0.1:{port}"

    url = urlsplit(pg_dsn)
    async with forwarder(port, url.hostname or "127.0.0.1", url.port or 5432):
        retried = await plugin.call("export_events", events(3))
        assert retried.ok, retried.error
        more = await plugin.call("export_events", events(50, start=3))
        assert more.ok, more.error

    rows = await pg.fetch("SELECT * FROM posthog_event_exportDROPTABLEx ORDER BY uuid")
    assert len(rows) == 53
    first = rows[0]
    assert first["event"] == "$pageview" and first["team_id"] == 2 and first["distinct_id"] == "user-0"
    assert first["timestamp"].isoformat() == "2021-03-01T10:00:00+00:00"
    assert first["properties"] == {"n": 0, "url": "https://example.com/café"}


async def test_results_and_errors_are_node_postgres(
    make_vm: Loader, stop_postgres_service: PluginPostgres, pg_dsn: str
) -> None:
    url = urlsplit(pg_dsn)
    vm = await make_vm("""
        import { Client, Pool } from 'pg'
        export async function processEvent(arg) {
            const client = new Client(arg.dsn)
            await client.connect()
            const { rows, rowCount, fields, command } = await client.query(
                'SELECT $1::int AS i, $2::bigint AS b, $3::numeric AS n, $4::timestamptz AS t, $5::jsonb AS j, ' +
                '$6::bool AS f, ARRAY[1, 2] AS a, $7::text AS s, NULL AS z, $8::float8 AS d',
                ['5', 12345678901234, 1.5, new Date(Date.UTC(2021, 0, 2)), { k: [1] }, true, 'café', '2.5'])
            const row = rows[0]
            const out = { row: { ...row, t: row.t instanceof Date ? row.t.toISOString() : 'not a date' },
                          rowCount, command, names: fields.map(f => f.name) }
            const errors = []
            for (const sql of ['SELECT * FROM no_such_table', 'SELEC 1']) {
                try { await client.query(sql) } catch (e) { errors.push([e.message, e.code]) }
            }
            await client.end()
            try { await client.query('SELECT 1') } catch (e) { errors.push([e.message]) }
            const missing = new Client({ ...arg.parts, database: 'no_such_database_here' })
            try { await missing.connect() } catch (e) { errors.push([e.message, e.code]) }
            const pool = new Pool({ ...arg.parts, max: 3 })
            const viaCallback = await new Promise((resolve, reject) =>
                pool.query('SELECT count(*)::int AS c FROM generate_series(1, $1::int)', [7],
                           (err, res) => err ? reject(err) : resolve(res.rows[0].c)))
            const arrays = await pool.query({ text: 'SELECT 1 AS x, 2 AS y', rowMode: 'array' })
            await pool.end()
            return { ...out, errors, viaCallback, arrays: arrays.rows }
        }
    """)
    parts = {"host": url.hostname, "port": url.port or 5432, "user": "postgres", "database": url.path[1:]}
    got = await vm.call_method("processEvent", {"dsn": pg_dsn, "parts": parts})
    assert got == {
        "row": {
            "i": 5,
            "b": "12345678901234",
            "n": "1.5",
            "t": "2021-01-02T00:00:00.000Z",
            "j": {"k": [1]},
            "f": True,
            "a": [1, 2],
            "s": "café",
            "z": None,
            "d": 2.5,
        },
        "rowCount": 1,
        "command": "SELECT",
        "names": ["i", "b", "n", "t", "j", "f", "a", "s", "z", "d"],
        "errors": [
            ['relation "no_such_table" does not exist', "42P01"],
            ['syntax error at or near "SELEC"', "42601"],
            ["Client was closed and is not queryable"],
            ['database "no_such_database_here" does not exist', "3D000"],
        ],
        "viaCallback": 7,
        "arrays": [[1, 2]],
    }


async def test_private_addresses_are_refused_by_default(make_vm: Loader, runner: PluginRunner) -> None:
    service = PluginPostgres()  # PLUGIN_FETCH_ALLOW_PRIVATE unset
    for name, handler in service.handlers().items():
        runner.services.register(name, handler)
    vm = await make_vm("""
        import { Client } from 'pg'
        export async function processEvent() {
            try { await new Client({ host: '127.0.0.1', port: 5432, user: 'postgres' }).connect() }
            catch (e) { return [e.message, e.code] }
        }
    """)
    got = await vm.call_method("processEvent", {})
    assert got == [
        "connect EACCES 127.0.0.1:5432: plugins may not reach private addresses (PLUGIN_FETCH_ALLOW_PRIVATE)",
        "EACCES",
    ]


async def test_a_handle_serves_only_the_config_that_opened_it(pg_dsn: str) -> None:
    service = PluginPostgres(allow_private=True)
    mine = PluginContext(plugin_config_id=1, plugin_id=1, team_id=2, plugin_name="a")
    theirs = PluginContext(plugin_config_id=2, plugin_id=1, team_id=3, plugin_name="b")
    try:
        handle = await service.connect(mine, {"connectionString": pg_dsn}, "client", "vm-1")
        assert (await service.query(mine, handle, "SELECT 1 AS one"))["rows"] == [[1]]
        with pytest.raises(PostgresFailure, match="Client was closed and is not queryable"):
            await service.query(theirs, handle, "SELECT 1")
        with pytest.raises(PostgresFailure):
            await service.end(theirs, handle)
        await service.release(theirs, "vm-1")  # another config's release leaves it open
        assert (await service.query(mine, handle, "SELECT 2 AS two"))["rows"] == [[2]]
        await service.release(mine, "vm-1")
        with pytest.raises(PostgresFailure):
            await service.query(mine, handle, "SELECT 1")
    finally:
        await service.stop()


async def test_queries_have_a_timeout(pg_dsn: str) -> None:
    service = PluginPostgres(allow_private=True)
    ctx = PluginContext(plugin_config_id=1, plugin_id=1, team_id=2, plugin_name="a")
    try:
        handle = await service.connect(ctx, {"connectionString": pg_dsn, "query_timeout": 200}, "client")
        labels = {"destination": "postgres", "operation": "query", "outcome": "error"}
        before = REGISTRY.get_sample_value("plugin_server_plugin_destination_requests_total", labels) or 0
        with pytest.raises(PostgresFailure, match="Query read timeout"):
            await service.query(ctx, handle, "SELECT pg_sleep(30)")
        after = REGISTRY.get_sample_value("plugin_server_plugin_destination_requests_total", labels)
        assert after == before + 1
    finally:
        await service.stop()


async def test_ssl_against_a_server_without_it_is_node_postgres_message(pg_dsn: str) -> None:
    """PostHog's PostgreSQL export always asks for SSL; this machine's Postgres has none."""
    service = PluginPostgres(allow_private=True)
    ctx = PluginContext(plugin_config_id=1, plugin_id=1, team_id=2, plugin_name="a")
    try:
        with pytest.raises(PostgresFailure, match=r"^The server does not support SSL connections$"):
            await service.connect(ctx, {"connectionString": pg_dsn, "ssl": {"rejectUnauthorized": False}})
    finally:
        await service.stop()
