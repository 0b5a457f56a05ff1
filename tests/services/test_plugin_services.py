"""posthog.capture, posthog.api, plugin metrics and the host-service dispatcher
(plugins §4.8, §4.9.2, §4.9.3; services §7.6) against real Postgres, Redis and a local server."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from plugin_server.queues.celery_format import PROCESS_EVENT_TASK, parse_celery_message
from plugin_server.services.capture import PluginCapture
from plugin_server.services.fetch import FetchRefused, PluginFetch
from plugin_server.services.geoip import MMDB_UNAVAILABLE, GeoIp
from plugin_server.services.host_api import HostServices, UnknownOperation
from plugin_server.services.jobs import GraphileJobQueue, JobQueueManager
from plugin_server.services.plugin_host import PluginConfigRef
from plugin_server.services.plugin_metrics import IllegalOperationError, PluginMetrics, validate_declaration
from plugin_server.services.posthog_api import PosthogApi, PosthogApiError, build_url
from plugin_server.version import VERSION
from tests.factories import create_team
from tests.services.http_server import local_server

REF = PluginConfigRef(id=39, team_id=2, plugin_id=60, plugin_name="test-maxmind-plugin", plugin_tag="v1")
QUEUE = "posthog-plugins"


async def test_capture_goes_back_onto_the_celery_queue(redis: aioredis.Redis) -> None:
    capture = PluginCapture(redis, celery_queue=QUEUE)
    await capture.capture(REF, "my event", {"a": 1, "timestamp": "2021-10-28T12:00:00.000Z"})
    [raw] = await redis.lrange(QUEUE, 0, -1)
    task = parse_celery_message(raw)
    assert task.name == PROCESS_EVENT_TASK
    distinct_id, ip, site_url, data, team_id, now, sent_at = task.args
    assert (distinct_id, ip, site_url, team_id) == ("test-maxmind-plugin", None, None, 2)
    assert now == sent_at == "2021-10-28T12:00:00.000Z"
    assert data["event"] == "my event"
    assert data["properties"] == {
        "$lib": "posthog-plugin-server",
        "$lib_version": VERSION,
        "distinct_id": "test-maxmind-plugin",
        "a": 1,
    }
    assert data["team_id"] == 2 and len(data["uuid"]) == 36


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))


async def test_capture_in_kafka_mode(redis: aioredis.Redis) -> None:
    producer = Producer()
    capture = PluginCapture(
        redis, celery_queue=QUEUE, kafka_producer=producer, kafka_topic="events_plugin_ingestion"
    )
    await capture.capture(REF, "ev", {"distinct_id": "someone"})
    [(topic, key, value)] = producer.sent
    message = json.loads(value)
    data = json.loads(message["data"])
    assert topic == "events_plugin_ingestion" and key.decode() == message["uuid"] == data["uuid"]
    assert (message["distinct_id"], message["ip"], message["site_url"], message["team_id"]) == (
        "someone",
        "",
        "",
        2,
    )
    assert message["now"] == message["sent_at"] == data["timestamp"]
    assert await redis.llen(QUEUE) == 0


def test_api_urls() -> None:
    token = "THIS IS NOT A TOKEN FOR TEAM 2"
    assert build_url("https://app.posthog.com", "/api/event", {"token": token}) == (
        "https://app.posthog.com/api/event?token=THIS+IS+NOT+A+TOKEN+FOR+TEAM+2"
    )
    assert build_url("https://app.posthog.com/", "api/event", {"url": "param", "token": token}) == (
        "https://app.posthog.com/api/event?url=param&token=THIS+IS+NOT+A+TOKEN+FOR+TEAM+2"
    )
    assert build_url("http://h", "/api/x?a=1", {"token": "t"}) == "http://h/api/x?a=1&token=t"


async def api_handler(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def test_api_calls_with_team_token_and_org_scoped_bot_key(pg: asyncpg.Pool) -> None:
    await create_team(pg)
    fetch = PluginFetch(allow_private=True)
    await fetch.start()
    api = PosthogApi(pg, fetch)
    try:
        async with local_server(api_handler) as server:
            response = await api.call(
                REF, "get", "/api/event", {"host": server.url, "data": {"url": "param"}}
            )
            assert response.status == 200
            await api.call(REF, "post", "/api/thing", {"host": server.url, "data": {"x": 1}})
        (m1, path1, headers1, _), (m2, path2, headers2, body2) = server.requests
        assert (m1, path1) == ("GET", "/api/event?url=param&token=THIS+IS+NOT+A+TOKEN+FOR+TEAM+2")
        assert (m2, path2) == ("POST", "/api/thing?token=THIS+IS+NOT+A+TOKEN+FOR+TEAM+2")
        assert json.loads(body2) == {"x": 1} and headers2["Content-Type"] == "application/json"
        key = headers1["Authorization"].removeprefix("Bearer ")
        assert key.startswith("phx_") and headers2["Authorization"] == headers1["Authorization"]
        bot = await pg.fetchrow(
            "SELECT u.email, u.first_name, m.organization_id FROM posthog_user u"
            " JOIN posthog_organizationmembership m ON m.user_id = u.id"
            " WHERE u.email LIKE '%@posthogbot.user'"
        )
        assert bot["first_name"] == "Plugins API User [Bot]"
        assert await pg.fetchval("SELECT value FROM posthog_personalapikey") == key
        with pytest.raises(PosthogApiError, match="You must specify a personalApiKey"):
            await api.call(REF, "get", "/x", {"projectApiKey": "p"})
        with pytest.raises(PosthogApiError, match="Unable to determine project"):
            await api.call(PluginConfigRef(1, 999, 1, "p"), "get", "/x")
    finally:
        await fetch.stop()


async def test_api_with_default_fetch_refuses_private_hosts(pg: asyncpg.Pool) -> None:
    await create_team(pg)
    fetch = PluginFetch()
    await fetch.start()
    try:
        with pytest.raises(FetchRefused):
            await PosthogApi(pg, fetch).call(REF, "get", "/api", {"host": "http://10.0.0.5"})
    finally:
        await fetch.stop()


async def test_plugin_metrics_aggregate_and_capture() -> None:
    captured: list[tuple[PluginConfigRef, str, dict[str, Any]]] = []

    async def capture(ref: PluginConfigRef, event: str, properties: Any) -> None:
        captured.append((ref, event, dict(properties)))

    metrics = PluginMetrics(capture)
    metrics.update(REF, "total", "increment", 0)
    metrics.update(REF, "total", "increment", 5)
    metrics.update(REF, "biggest", "max", 3)
    metrics.update(REF, "biggest", "max", 2)
    metrics.update(REF, "smallest", "min", 0)
    metrics.update(REF, "smallest", "min", 4)  # a stored 0 is a value, not "unset"
    with pytest.raises(IllegalOperationError, match="Only numbers are allowed"):
        metrics.update(REF, "total", "increment", "5")
    with pytest.raises(IllegalOperationError):
        metrics.update(REF, "total", "max", 1, declared="sum")
    await metrics.stop()  # flushes
    assert captured == [
        (
            REF,
            "$$plugin_metrics",
            {
                "total": 5,
                "biggest": 3,
                "smallest": 0,
                "plugin_name": "test-maxmind-plugin",
                "plugin_id": 60,
                "plugin_tag": "v1",
            },
        )
    ]
    assert metrics.current(REF.id) == {}
    assert validate_declaration({"A": "SUM", "b": 3}) == {"A": "sum"}
    with pytest.raises(IllegalOperationError, match="Invalid types received: avg"):
        validate_declaration({"a": "avg"})


async def test_host_services_dispatch(pg: asyncpg.Pool, redis: aioredis.Redis) -> None:
    fetch = PluginFetch()
    await fetch.start()
    captured: list[Any] = []

    async def capture(ref: PluginConfigRef, event: str, properties: Any) -> None:
        captured.append(event)

    jobs = JobQueueManager([GraphileJobQueue(schema="graphile_worker", pool=pg)])
    services = HostServices(
        geoip=GeoIp(disabled=True),
        jobs=jobs,
        capture=PluginCapture(redis, celery_queue=QUEUE),
        api=PosthogApi(pg, fetch),
        fetch=fetch,
        metrics=PluginMetrics(capture),
    )
    try:
        due = int(time.time() * 1000) + 1000
        assert await services.call(REF, "jobs.enqueue", ("logReply", {"text": "runIn"}, due)) is None
        payload = json.loads(await pg.fetchval("SELECT payload::text FROM graphile_worker.jobs"))
        assert payload == {
            "type": "logReply",
            "payload": {"text": "runIn"},
            "timestamp": due,
            "pluginConfigId": 39,
            "pluginConfigTeam": 2,
        }
        with pytest.raises(RuntimeError, match=MMDB_UNAVAILABLE.replace("!", "")):
            await services.call(REF, "geoip.locate", ("89.160.20.129",))
        await services.call(REF, "posthog.capture", ("hello", {}))
        assert await redis.llen(QUEUE) == 1
        with pytest.raises(FetchRefused):
            await services.call(REF, "fetch", ("http://169.254.169.254/", "GET", None, None, None))
        await services.call(REF, "metric", ("sent", "increment", 2))
        assert services.metrics.current(39) == {"sent": 2}
        with pytest.raises(UnknownOperation):
            await services.call(REF, "nope", ())
    finally:
        await fetch.stop()
