"""Outgoing notifications for matched actions: chat webhooks (Slack, Discord, Teams) and REST hooks
(Zapier) (spec/ingestion.md §2.13). Requests run in background tasks with a timeout and a few
retries, so a slow or failing endpoint never holds up ingestion."""

from __future__ import annotations

import asyncio
import enum
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
from prometheus_client import Counter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from plugin_server.ingestion import queries
from plugin_server.ingestion.actions import Action
from plugin_server.ingestion.js import js_string, stringify, truthy
from plugin_server.ingestion.persons import Person
from plugin_server.ingestion.teams import OrganizationCache, TeamCache
from plugin_server.ingestion.timestamps import from_datetime, iso_text
from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY

log = get_logger(__name__)

HOOK_REQUESTS = Counter(
    "ingestion_hook_requests_total",
    "Webhook and REST hook requests sent for matched actions, by kind and result",
    ["kind", "result"],
    registry=REGISTRY,
)


class WebhookKind(enum.Enum):
    SLACK = "slack"
    DISCORD = "discord"
    TEAMS = "teams"


def webhook_kind(url: str) -> WebhookKind:
    lowered = url.lower()
    if "slack.com" in lowered:
        return WebhookKind.SLACK
    if "discord.com" in lowered:
        return WebhookKind.DISCORD
    return WebhookKind.TEAMS


def _link(kind: WebhookKind, url: str, label: str) -> str:
    return f"<{url}|{label}>" if kind is WebhookKind.SLACK else f"[{label}]({url})"


def user_details(
    event: dict[str, Any], person: Person | None, site_url: Any, kind: WebhookKind
) -> tuple[str, str]:
    if person is None:
        return "undefined", "undefined"
    email = person.properties.get("email")
    distinct_id = event.get("distinct_id")
    name = stringify(email if truthy(email) else distinct_id)
    return name, _link(kind, f"{js_string(site_url)}/person/{js_string(distinct_id)}", name)


def action_details(action: Action, site_url: Any, kind: WebhookKind) -> tuple[str, str]:
    name = stringify(action.name)
    return name, _link(kind, f"{js_string(site_url)}/action/{action.id}", name)


_TOKEN = re.compile(r"\[(.*?)\]")
_WORD = re.compile(r"\w+")


def message_tokens(message_format: str) -> tuple[list[str], str]:
    """The `[...]` tokens and the template with each replaced by `%s`."""
    return _TOKEN.findall(message_format), _TOKEN.sub("%s", message_format)


class _FormatError(ValueError):
    pass


def token_value(
    token: str,
    action: Action,
    event: dict[str, Any],
    person: Person | None,
    site_url: Any,
    kind: WebhookKind,
) -> tuple[str, str]:
    parts = _WORD.findall(token)
    if not parts:
        raise _FormatError(token)
    properties = event.get("properties") or {}
    if parts[0] == "user":
        if len(parts) > 1 and parts[1] == "name":
            return user_details(event, person, site_url, kind)
        key = f"${parts[1]}" if len(parts) > 1 else "$undefined"
        value = stringify(properties[key]) if key in properties else "undefined"
        return value, value
    if parts[0] == "action":
        if len(parts) > 1 and parts[1] == "name":
            return action_details(action, site_url, kind)
        return "", ""
    if parts[0] == "event":
        if len(parts) > 1 and parts[1] == "name":
            value = stringify(event.get("event"))
        elif len(parts) > 2 and parts[1] == "properties":
            value = stringify(properties[parts[2]]) if parts[2] in properties else "undefined"
        else:
            value = ""
        return value, value
    raise _FormatError(token)


def format_message(
    action: Action, event: dict[str, Any], person: Person | None, site_url: Any, kind: WebhookKind
) -> tuple[str, str]:
    """(plain text, markdown) of the action's message template."""
    message_format = action.slack_message_format or "[action.name] was triggered by [user.name]"
    tokens, template = message_tokens(message_format)
    try:
        values = [token_value(t, action, event, person, site_url, kind) for t in tokens]
    except _FormatError:
        text_name, markdown_name = action_details(action, site_url, kind)
        error = "⚠ Error: There are one or more formatting errors in the message template for action"
        return f'{error} "{text_name}".', f'*{error} "{markdown_name}".*'
    pieces = template.split("%s")
    text = pieces[0] + "".join(v[0] + p for v, p in zip(values, pieces[1:], strict=True))
    markdown = pieces[0] + "".join(v[1] + p for v, p in zip(values, pieces[1:], strict=True))
    return text, markdown


def webhook_body(kind: WebhookKind, text: str, markdown: str) -> dict[str, Any]:
    if kind is WebhookKind.SLACK:
        return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": markdown}}]}
    return {"text": markdown}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_text(from_datetime(value))
    return value


def rest_hook_body(hook: dict[str, Any], event: dict[str, Any], person: Person | None) -> dict[str, Any]:
    data = dict(event)
    if person is not None:
        data["person"] = {k: _json_value(v) for k, v in person.row.items()}
    return {"hook": {"id": hook["id"], "event": hook["event"], "target": hook["target"]}, "data": data}


def hook_json(body: dict[str, Any]) -> str:
    """`JSON.stringify(body, null, 4)` layout."""
    return json.dumps(body, indent=4, ensure_ascii=False, default=str)


class _RetryableStatus(Exception):
    pass


class HookSender:
    """Fires webhooks and REST hooks for matched actions without blocking the caller."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        teams: TeamCache,
        organizations: OrganizationCache,
        *,
        timeout_seconds: float = 10.0,
        attempts: int = 3,
    ) -> None:
        self._pool = pool
        self._teams = teams
        self._organizations = organizations
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._attempts = attempts
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def fire(self, event: dict[str, Any], person: Person | None, actions: Sequence[Action]) -> None:
        if not actions:
            return
        task = asyncio.get_running_loop().create_task(self._fire(event, person, list(actions)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Wait until every hook fired so far has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        await self.wait_idle()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _fire(self, event: dict[str, Any], person: Person | None, actions: list[Action]) -> None:
        try:
            team = await self._teams.get(event.get("team_id"))
            if team is None:
                return
            requests = []
            if team.slack_incoming_webhook:
                url = team.slack_incoming_webhook
                kind = webhook_kind(url)
                for action in actions:
                    if action.post_to_slack:
                        text, markdown = format_message(action, event, person, event.get("site_url"), kind)
                        requests.append(self._post(kind.value, url, webhook_body(kind, text, markdown)))
            organization = await self._organizations.get(team.organization_id)
            if organization is None:
                log.error("hook_organization_missing", team_id=team.id, organization_id=team.organization_id)
            elif "zapier" in organization.available_features:
                for action in actions:
                    for hook in await self._pool.fetch(queries.SELECT_REST_HOOKS, team.id, action.id):
                        requests.append(self._post_rest_hook(dict(hook), event, person))
            await asyncio.gather(*requests)
        except Exception as error:
            log.error("hooks_failed", error=str(error), event_uuid=event.get("uuid"))

    async def _post_rest_hook(
        self, hook: dict[str, Any], event: dict[str, Any], person: Person | None
    ) -> None:
        status = await self._post("rest_hook", hook["target"], rest_hook_body(hook, event, person))
        if status == 410:
            await self._pool.execute(queries.DELETE_REST_HOOK, hook["id"])

    async def _post(self, kind: str, url: str, body: dict[str, Any]) -> int | None:
        data = hook_json(body).encode()
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential(multiplier=0.2, max=2),
                retry=retry_if_exception_type((aiohttp.ClientError, TimeoutError, _RetryableStatus)),
                reraise=True,
            ):
                with attempt:
                    async with self._client().post(
                        url, data=data, headers={"Content-Type": "application/json"}
                    ) as response:
                        if response.status >= 500:
                            raise _RetryableStatus(response.status)
                        HOOK_REQUESTS.labels(kind, "sent").inc()
                        return response.status
        except Exception as error:
            HOOK_REQUESTS.labels(kind, "failed").inc()
            log.warning("hook_request_failed", kind=kind, url=url, error=str(error) or type(error).__name__)
        return None
