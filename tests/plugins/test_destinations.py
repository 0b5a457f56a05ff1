"""Python plugins reach the export destinations through the host: `meta.postgres` against the
machine's Postgres (the same service JS plugins' `pg` uses)."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from plugin_server.services.plugin_postgres import PluginPostgres
from tests.plugins.conftest import RunnerFactory, add_python_plugin

EXPORTER = """
from posthog_plugin import RetryError

async def export_events(events, meta):
    try:
        # a test's events may name another target
        client = await meta.postgres.connect(events[0]["properties"].get("dsn") or meta.config["dsn"])
    except Exception as error:
        raise RetryError(f"Export to Postgres failed: {error}")
    try:
        await client.query("CREATE TABLE IF NOT EXISTS py_export (event text, n integer, at timestamptz)")
        values, tuples = [], []
        for event in events:
            at = len(values)
            tuples.append(f"(${at + 1}, ${at + 2}, ${at + 3})")
            values += [event["event"], event["properties"]["n"], event["timestamp"]]
        result = await client.query("INSERT INTO py_export VALUES " + ", ".join(tuples), values)
        check = await client.query("SELECT count(*)::int AS c, max(at) AS last FROM py_export")
        await meta.storage.set("result", [result["command"], result["rowCount"], check["rows"][0]])
    finally:
        await client.end()
"""


def events(count: int) -> list[dict[str, Any]]:
    return [
        {"event": f"e{i}", "properties": {"n": i}, "timestamp": f"2021-01-0{i + 1}T00:00:00Z"}
        for i in range(count)
    ]


def refused_dsn(pg_dsn: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return pg_dsn.replace(f":{urlsplit(pg_dsn).port}/", f":{port}/")


async def test_a_python_export_plugin_writes_through_meta_postgres(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory, pg_dsn: str
) -> None:
    await add_python_plugin(pg, EXPORTER, config={"dsn": pg_dsn})
    service = PluginPostgres(allow_private=True)
    async with plugin_runner() as runner:
        for name, handler in service.handlers().items():
            runner.services.register(name, handler)
        try:
            outcome = await runner.call_method(39, "export_events", [events(3)])
            assert outcome.ok, outcome.error
            stored = await pg.fetchval("SELECT value FROM posthog_pluginstorage WHERE key = 'result'")
            assert json.loads(stored) == ["INSERT", 3, {"c": 3, "last": "2021-01-03T00:00:00+00:00"}]

            elsewhere = [{**events(1)[0], "properties": {"n": 0, "dsn": refused_dsn(pg_dsn)}}]
            refused = await runner.call_method(39, "export_events", [elsewhere])
            assert refused.error is not None and refused.error["retry"] is True
            assert refused.error["message"].startswith(
                "Export to Postgres failed: connect ECONNREFUSED 127.0.0.1:"
            )
        finally:
            await service.stop()
