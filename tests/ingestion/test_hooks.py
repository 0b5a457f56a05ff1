"""Spec scenarios 4.5 (hook message formatting) and 60-62 (webhooks, REST hooks, saved action
matches), the latter end to end against a local HTTP server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from plugin_server.ingestion.actions import Action
from plugin_server.ingestion.hooks import (
    WebhookKind,
    action_details,
    format_message,
    message_tokens,
    token_value,
    user_details,
    webhook_kind,
)
from plugin_server.ingestion.persons import Person
from plugin_server.ingestion.pipeline import PostgresIngestor
from plugin_server.ingestion.types import Outcome
from tests.factories import ORGANIZATION_ID, TEAM_ID, USER_ID, insert_row
from tests.ingestion.conftest import events, ingest, make_event

ACTION = Action(id=1, team_id=2, name="action1", post_to_slack=True, slack_message_format="")


def _person(properties: dict[str, Any]) -> Person:
    return Person(
        id=1,
        created_at=datetime.now(UTC),
        team_id=2,
        properties=properties,
        is_identified=False,
        uuid="u",
        record={},
    )


def test_4_5_081_webhook_kind() -> None:
    assert webhook_kind("https://hooks.slack.com/services/") is WebhookKind.SLACK
    assert webhook_kind("https://discord.com/api/webhooks/") is WebhookKind.DISCORD
    assert webhook_kind("https://outlook.office.com/webhook/") is WebhookKind.TEAMS


def test_4_5_082_user_details() -> None:
    event = {"distinct_id": 2, "properties": {}}
    person = _person({"email": "test@posthog.com"})
    site = "http://localhost:8000"
    assert user_details(event, person, site, WebhookKind.SLACK) == (
        "test@posthog.com",
        "<http://localhost:8000/person/2|test@posthog.com>",
    )
    assert user_details(event, person, site, WebhookKind.TEAMS) == (
        "test@posthog.com",
        "[test@posthog.com](http://localhost:8000/person/2)",
    )


def test_4_5_083_action_details() -> None:
    site = "http://localhost:8000"
    assert action_details(ACTION, site, WebhookKind.SLACK) == (
        "action1",
        "<http://localhost:8000/action/1|action1>",
    )
    assert action_details(ACTION, site, WebhookKind.TEAMS) == (
        "action1",
        "[action1](http://localhost:8000/action/1)",
    )


def test_4_5_084_tokens() -> None:
    assert message_tokens("[action.name] got done by [user.name]") == (
        ["action.name", "user.name"],
        "%s got done by %s",
    )


def test_4_5_085_token_values() -> None:
    event = {"distinct_id": 2, "properties": {"$browser": "Chrome"}}
    person = _person({})
    site = "http://localhost:8000"

    def value(token: str) -> tuple[str, str]:
        return token_value(token, ACTION, event, person, site, WebhookKind.TEAMS)

    assert value("user.name") == ("2", "[2](http://localhost:8000/person/2)")
    assert value("user.browser") == ("Chrome", "Chrome")
    assert value("user.missing_property") == ("undefined", "undefined")


def test_4_5_086_message_formats() -> None:
    event = {"distinct_id": 2, "properties": {"$browser": "Chrome", "page_title": "Pricing"}}
    person = _person({})
    site = "https://localhost:8000"

    def fmt(template: str) -> tuple[str, str]:
        action = Action(id=1, team_id=2, name="action1", post_to_slack=True, slack_message_format=template)
        return format_message(action, event, person, site, WebhookKind.SLACK)

    assert fmt(
        "[user.name] from [user.browser] on [event.properties.page_title] page with [event.properties.fruit]"
    ) == (
        "2 from Chrome on Pricing page with undefined",
        "<https://localhost:8000/person/2|2> from Chrome on Pricing page with undefined",
    )
    assert fmt("") == (
        "action1 was triggered by 2",
        "<https://localhost:8000/action/1|action1> was triggered by <https://localhost:8000/person/2|2>",
    )
    assert fmt("[user.name] did thing from browser [user.brauzer]") == (
        "2 did thing from browser undefined",
        "<https://localhost:8000/person/2|2> did thing from browser undefined",
    )
    text, markdown = fmt("[foo.bar] is broken")
    assert (
        text
        == '⚠ Error: There are one or more formatting errors in the message template for action "action1".'
    )
    assert markdown.startswith("*⚠ Error") and markdown.endswith(
        '"<https://localhost:8000/action/1|action1>".*'
    )


class HookServer:
    """A local HTTP server recording what it receives; answers with `status`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []  # (path, content type, body)
        self.status = 200
        self.delay = 0.0
        self.received = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.requests.append((request.path, request.headers.get("Content-Type", ""), await request.text()))
        self.received.set()
        return web.Response(status=self.status)


@pytest.fixture
async def hook_server() -> AsyncIterator[tuple[HookServer, str]]:
    server = HookServer()
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _xyz_event() -> dict[str, Any]:
    return make_event(
        "xyz",
        "abc",
        {"foo": "bar"},
        ip=None,
        site_url="https://example.com",
        timestamp="2021-10-28T12:00:00.000Z",
    )


async def test_4_2_060_chat_webhook_teams_format(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, hook_server: tuple[HookServer, str]
) -> None:
    server, url = hook_server
    await pg.execute(
        "UPDATE posthog_team SET slack_incoming_webhook = $1 WHERE id = $2", f"{url}/webhook", TEAM_ID
    )
    assert await ingest(ingestor, _xyz_event()) == [Outcome.INGESTED]
    await ingestor.hooks.wait_idle()
    ((path, content_type, body),) = server.requests
    assert path == "/webhook" and content_type == "application/json"
    expected = {
        "text": "[Test Action](https://example.com/action/69) was triggered by [abc](https://example.com/person/abc)"
    }
    assert body == json.dumps(expected, indent=4)


async def test_4_2_061_rest_hook(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, hook_server: tuple[HookServer, str]
) -> None:
    server, url = hook_server
    await pg.execute(
        "UPDATE posthog_organization SET available_features = '{zapier}' WHERE id = $1::uuid", ORGANIZATION_ID
    )
    target = f"{url}/rest-hooks"
    await insert_row(
        pg,
        "ee_hook",
        {
            "id": "abc",
            "team_id": TEAM_ID,
            "user_id": USER_ID,
            "resource_id": 69,
            "event": "action_performed",
            "target": target,
        },
    )
    event = _xyz_event()
    assert await ingest(ingestor, event) == [Outcome.INGESTED]
    await ingestor.hooks.wait_idle()
    ((path, _, body),) = server.requests
    assert path == "/rest-hooks"
    payload = json.loads(body)
    assert payload["hook"] == {"id": "abc", "event": "action_performed", "target": target}
    person = payload["data"].pop("person")
    assert payload["data"] == {**event, "properties": {"foo": "bar"}}
    assert set(person) == {
        "id",
        "created_at",
        "team_id",
        "properties",
        "properties_last_updated_at",
        "properties_last_operation",
        "is_user_id",
        "is_identified",
        "uuid",
        "persondistinctid__team_id",
        "persondistinctid__distinct_id",
    }
    assert (
        person["team_id"] == TEAM_ID
        and person["properties"] == {}
        and person["properties_last_updated_at"] == {}
    )
    assert person["properties_last_operation"] is None and person["is_user_id"] is None
    assert person["is_identified"] is False and person["persondistinctid__distinct_id"] == "abc"
    assert person["created_at"].endswith("Z") and len(person["created_at"]) == 24


async def test_4_2_061_rest_hook_gone_is_deleted(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, hook_server: tuple[HookServer, str]
) -> None:
    server, url = hook_server
    server.status = 410
    await pg.execute(
        "UPDATE posthog_organization SET available_features = '{zapier}' WHERE id = $1::uuid", ORGANIZATION_ID
    )
    await insert_row(
        pg,
        "ee_hook",
        {
            "id": "gone",
            "team_id": TEAM_ID,
            "user_id": USER_ID,
            "resource_id": 69,
            "event": "action_performed",
            "target": url,
        },
    )
    await ingest(ingestor, _xyz_event())
    await ingestor.hooks.wait_idle()
    assert len(server.requests) == 1
    assert await pg.fetchval("SELECT count(*) FROM ee_hook") == 0


async def test_4_2_062_action_matches_saved(pg: asyncpg.Pool, ingestor: PostgresIngestor) -> None:
    await ingest(ingestor, make_event("xyz", "abc", {"foo": "bar"}), make_event("xyz", "abc", {"foo": "baz"}))
    matched, _unmatched = await events(pg)
    rows = await pg.fetch("SELECT action_id, event_id FROM posthog_action_events")
    assert [(r["action_id"], r["event_id"]) for r in rows] == [(69, matched["id"])]


async def test_5_2_24_slow_webhook_does_not_block_ingestion(
    pg: asyncpg.Pool, ingestor: PostgresIngestor, hook_server: tuple[HookServer, str]
) -> None:
    """Recommendation: hooks have a timeout and run in the background."""
    server, url = hook_server
    server.delay = 5.0
    await pg.execute("UPDATE posthog_team SET slack_incoming_webhook = $1 WHERE id = $2", url, TEAM_ID)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await ingest(ingestor, _xyz_event()) == [Outcome.INGESTED]
    assert loop.time() - started < 2.0
    assert len(await events(pg)) == 1
