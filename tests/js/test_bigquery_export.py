"""The `@google-cloud/bigquery` facade against a local HTTP server that serves the few BigQuery
REST endpoints and the OAuth token endpoint it uses (no local BigQuery exists): an export
plugin in the style of PostHog's BigQuery export plugin, errors, and the address policy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from plugin_server.plugins.host_services import PluginContext
from plugin_server.plugins.runner import PluginRunner
from plugin_server.services.plugin_bigquery import BigQueryFailure, PluginBigQuery
from tests.js.conftest import Loader

EXPORT_PLUGIN = """
import { BigQuery } from '@google-cloud/bigquery'
import { RetryError } from '@posthog/plugin-scaffold'

const SCHEMA = [
    { name: 'uuid', type: 'STRING' }, { name: 'event', type: 'STRING' },
    { name: 'properties', type: 'STRING' }, { name: 'timestamp', type: 'TIMESTAMP' },
]

export async function setupPlugin({ global, config }) {
    const credentials = JSON.parse(config.googleCloudKeyJson)
    global.bigQueryClient = new BigQuery({ projectId: credentials['project_id'], credentials,
                                           apiEndpoint: config.apiEndpoint })
    global.bigQueryTable = global.bigQueryClient.dataset(config.datasetId).table(config.tableId)
    try {
        const [metadata] = await global.bigQueryTable.getMetadata()
        if (!metadata.schema || !metadata.schema.fields) throw new Error('Can not get metadata for table')
    } catch (error) {
        if (!error.message.includes('Not found')) throw error
        await global.bigQueryClient.dataset(config.datasetId).createTable(config.tableId, { schema: SCHEMA })
    }
}

export async function exportEvents(events, { global }) {
    const rows = events.map(e => ({ insertId: e.uuid, json: {
        uuid: e.uuid, event: e.event, properties: JSON.stringify(e.properties),
        timestamp: global.bigQueryClient.timestamp(new Date(e.timestamp)) } }))
    try {
        await global.bigQueryTable.insert(rows, { raw: true, skipInvalidRows: true, ignoreUnknownValues: true })
    } catch (error) {
        throw new RetryError(`Error inserting into BigQuery! ${error.message}`)
    }
}
"""


@dataclass
class FakeBigQuery:
    """Tables, received rows and tokens of the local server."""

    public_pem: bytes
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fail_inserts: int = 0
    url: str = ""


@pytest.fixture
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def fake_bigquery(key: rsa.RSAPrivateKey) -> AsyncIterator[FakeBigQuery]:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    state = FakeBigQuery(public)

    def not_found(what: str) -> web.Response:
        body = {"error": {"code": 404, "message": f"Not found: {what}", "errors": [{"reason": "notFound"}]}}
        return web.json_response(body, status=404)

    def authorised(request: web.Request) -> bool:
        return request.headers.get("Authorization") == "Bearer token-1"

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        claims = jwt.decode(str(form["assertion"]), certs=state.public_pem, audience=f"{state.url}/token")
        assert claims["scope"] == "https://www.googleapis.com/auth/bigquery"
        return web.json_response({"access_token": "token-1", "expires_in": 3600, "token_type": "Bearer"})

    async def get_table(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"error": {"code": 401, "message": "Unauthorized"}}, status=401)
        p, d, t = request.match_info["p"], request.match_info["d"], request.match_info["t"]
        table = state.tables.get(f"{p}:{d}.{t}")
        return web.json_response(table) if table else not_found(f"Table {p}:{d}.{t}")

    async def create_table(request: web.Request) -> web.Response:
        body = await request.json()
        ref = body["tableReference"]
        name = f"{ref['projectId']}:{ref['datasetId']}.{ref['tableId']}"
        state.tables[name] = {"kind": "bigquery#table", "id": name, **body}
        return web.json_response(state.tables[name])

    async def insert_all(request: web.Request) -> web.Response:
        p, d, t = request.match_info["p"], request.match_info["d"], request.match_info["t"]
        name = f"{p}:{d}.{t}"
        if name not in state.tables:
            return not_found(f"Table {name}")
        body = await request.json()
        if state.fail_inserts > 0:
            state.fail_inserts -= 1
            return web.json_response({"error": {"code": 503, "message": "Service unavailable"}}, status=503)
        good = [r for r in body["rows"] if r["json"].get("event") != "bad"]
        state.rows.setdefault(name, []).extend(good)
        errors = [
            {"index": i, "errors": [{"reason": "invalid", "message": "no such field"}]}
            for i, r in enumerate(body["rows"])
            if r["json"].get("event") == "bad"
        ]
        return web.json_response(
            {"kind": "bigquery#tableDataInsertAllResponse", **({"insertErrors": errors} if errors else {})}
        )

    app = web.Application()
    base = "/bigquery/v2/projects/{p}/datasets/{d}/tables"
    app.router.add_post("/token", token)
    app.router.add_get(base + "/{t}", get_table)
    app.router.add_post(base, create_table)
    app.router.add_post(base + "/{t}/insertAll", insert_all)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def key_json(key: rsa.RSAPrivateKey, fake: FakeBigQuery) -> str:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "my-project",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": "exporter@my-project.iam.gserviceaccount.com",
            "token_uri": f"{fake.url}/token",
        }
    )


@pytest.fixture
async def bigquery_service(runner: PluginRunner) -> AsyncIterator[PluginBigQuery]:
    service = PluginBigQuery(allow_private=True)  # the fake listens on loopback
    for name, handler in service.handlers().items():
        runner.services.register(name, handler)
    yield service
    await service.stop()


async def test_export_plugin_creates_its_table_and_inserts(
    load_plugin: Loader, bigquery_service: PluginBigQuery, fake_bigquery: FakeBigQuery, key: rsa.RSAPrivateKey
) -> None:
    config = {
        "googleCloudKeyJson": key_json(key, fake_bigquery),
        "apiEndpoint": fake_bigquery.url,
        "datasetId": "posthog",
        "tableId": "events",
    }
    plugin = await load_plugin(EXPORT_PLUGIN, config=config)
    assert plugin.loaded.exports is not None
    table = fake_bigquery.tables["my-project:posthog.events"]
    assert [f["name"] for f in table["schema"]["fields"]] == ["uuid", "event", "properties", "timestamp"]

    events = [
        {"uuid": f"u{i}", "event": "$pageview", "properties": {"i": i}, "timestamp": "2021-05-01T10:00:00Z"}
        for i in range(5)
    ]
    outcome = await plugin.call("export_events", events)
    assert outcome.ok, outcome.error
    rows = fake_bigquery.rows["my-project:posthog.events"]
    assert [r["insertId"] for r in rows] == [f"u{i}" for i in range(5)]
    assert rows[0]["json"] == {
        "uuid": "u0",
        "event": "$pageview",
        "properties": '{"i":0}',
        "timestamp": "2021-05-01T10:00:00.000Z",
    }

    fake_bigquery.fail_inserts = 1
    failed = await plugin.call("export_events", events[:1])
    assert failed.error is not None and failed.error["retry"] is True
    assert failed.error["message"] == "Error inserting into BigQuery! Service unavailable"


async def test_table_api_answers_and_errors_are_the_librarys(
    make_vm: Loader, bigquery_service: PluginBigQuery, fake_bigquery: FakeBigQuery, key: rsa.RSAPrivateKey
) -> None:
    vm = await make_vm("""
        import { BigQuery } from '@google-cloud/bigquery'
        export async function processEvent(arg) {
            const bq = new BigQuery({ credentials: JSON.parse(arg.key), apiEndpoint: arg.endpoint })
            const table = bq.dataset('ds').table('t')
            const out = {}
            try { await table.getMetadata() } catch (e) { out.missing = [e.message, e.code] }
            out.exists = (await table.exists())[0]
            const [created] = await table.create({ schema: [{ name: 'event', type: 'STRING' }] })
            out.created = created.id
            out.existsNow = (await table.exists())[0]
            try { await table.insert([{ event: 'ok' }, { event: 'bad' }]) }
            catch (e) { out.partial = [e.name, e.errors.map(x => [x.row.event, x.errors[0].reason])] }
            out.inserted = await new Promise((resolve, reject) =>
                table.insert({ event: 'cb' }, { createInsertId: false }, (err, res) => err ? reject(err) : resolve(res.kind)))
            return out
        }
    """)
    got = await vm.call_method(
        "processEvent", {"key": key_json(key, fake_bigquery), "endpoint": fake_bigquery.url}
    )
    assert got == {
        "missing": ["Not found: Table my-project:ds.t", 404],
        "exists": False,
        "created": "t",
        "existsNow": True,
        "partial": ["PartialFailureError", [["bad", "invalid"]]],
        "inserted": "bigquery#tableDataInsertAllResponse",
    }
    rows = fake_bigquery.rows["my-project:ds.t"]
    assert [r["json"]["event"] for r in rows] == ["ok", "cb"]
    assert len(rows[0]["insertId"]) == 36 and "insertId" not in rows[1]


async def test_private_endpoints_are_refused_by_default(
    fake_bigquery: FakeBigQuery, key: rsa.RSAPrivateKey
) -> None:
    service = PluginBigQuery()
    ctx = PluginContext(plugin_config_id=1, plugin_id=1, team_id=2, plugin_name="bq")
    options = {"credentials": json.loads(key_json(key, fake_bigquery)), "apiEndpoint": fake_bigquery.url}
    try:
        with pytest.raises(BigQueryFailure, match="is a private address plugins may not reach"):
            await service.get_table(ctx, options, "ds", "t")
    finally:
        await service.stop()


async def test_an_unreachable_api_is_a_fetch_error(
    make_vm: Loader, bigquery_service: PluginBigQuery, fake_bigquery: FakeBigQuery, key: rsa.RSAPrivateKey
) -> None:
    """PostHog's BigQuery plugin retries on `error instanceof FetchError` (node-fetch's)."""
    vm = await make_vm("""
        import { BigQuery } from '@google-cloud/bigquery'
        import { FetchError } from 'node-fetch'
        export async function processEvent(arg) {
            const table = new BigQuery({ credentials: JSON.parse(arg.key), apiEndpoint: 'http://127.0.0.1:1' })
                .dataset('ds').table('t')
            try { await table.insert([{ a: 1 }]) } catch (e) { return [e instanceof FetchError, e.name] }
        }
    """)
    got = await vm.call_method("processEvent", {"key": key_json(key, fake_bigquery)})
    assert got == [True, "FetchError"]
