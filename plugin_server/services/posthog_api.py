"""`posthog.api.get|post|put|delete(path, options)` for plugins (plugins §4.9.3).

Calls the PostHog REST API as the plugin config's team: the project token goes in the query
string and a personal API key of a bot user in the Authorization header. The bot user is
provisioned once per organization, and looked up only among that organization's members
(plugins §8.11); JSON bodies are sent with a Content-Type.
"""

from __future__ import annotations

import json
import random
import secrets
import string
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import asyncpg

from plugin_server.services.fetch import FetchResponse, PluginFetch
from plugin_server.services.plugin_host import PluginConfigRef

DEFAULT_HOST = "https://app.posthog.com"
BOT_EMAIL_DOMAIN = "@posthogbot.user"
BOT_FIRST_NAME = "Plugins API User [Bot]"
KEY_CACHE_SECONDS = 30.0
METHODS = ("GET", "POST", "PUT", "DELETE")
_BASE62 = string.digits + string.ascii_letters

_TEAM = "SELECT api_token, organization_id FROM posthog_team WHERE id = $1"
_FIND_BOT = """
SELECT u.id FROM posthog_user u
JOIN posthog_organizationmembership m ON m.user_id = u.id
WHERE m.organization_id = $1 AND u.email LIKE '%' || $2
ORDER BY u.id LIMIT 1
"""
_CREATE_BOT = """
INSERT INTO posthog_user (password, first_name, uuid, email, current_organization_id, current_team_id)
VALUES ('!', $1, $2, $3, $4, $5) RETURNING id
"""
_ADD_MEMBER = """
INSERT INTO posthog_organizationmembership (id, organization_id, user_id, level) VALUES ($1, $2, $3, 1)
"""
_FIND_KEY = "SELECT value FROM posthog_personalapikey WHERE user_id = $1 ORDER BY created_at LIMIT 1"
_CREATE_KEY = "INSERT INTO posthog_personalapikey (id, user_id, label, value) VALUES ($1, $2, 'autogen', $3)"


class PosthogApiError(ValueError):
    pass


def _base62(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def build_url(host: str, path: str, query: Mapping[str, Any]) -> str:
    base = host.rstrip("/") + "/" + path.lstrip("/")
    return base + ("&" if "?" in base else "?") + urlencode({k: _query_value(v) for k, v in query.items()})


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class PosthogApi:
    def __init__(self, postgres: asyncpg.Pool, fetch: PluginFetch) -> None:
        self._pg = postgres
        self._fetch = fetch
        self._keys: dict[str, tuple[float, str]] = {}

    async def call(
        self, ref: PluginConfigRef, method: str, path: str, options: Mapping[str, Any] | None = None
    ) -> FetchResponse:
        method = method.upper()
        if method not in METHODS:
            raise PosthogApiError(f"unknown method {method}")
        options = dict(options or {})
        project_key = options.get("projectApiKey") or options.get("project_api_key")
        personal_key = options.get("personalApiKey") or options.get("personal_api_key")
        if bool(project_key) != bool(personal_key):
            raise PosthogApiError(
                "You must specify a personalApiKey if you specify a projectApiKey and vice-versa!"
            )
        if not project_key:
            project_key, personal_key = await self._team_keys(ref)
        data = options.get("data") or {}
        query: dict[str, Any] = {**data, "token": project_key} if method == "GET" else {"token": project_key}
        url = build_url(options.get("host") or DEFAULT_HOST, path, query)
        headers = {"Authorization": f"Bearer {personal_key}"}
        body = None
        if method in ("POST", "PUT"):
            body = json.dumps(data)
            headers["Content-Type"] = "application/json"
        return await self._fetch.fetch(url, method=method, headers=headers, body=body)

    async def _team_keys(self, ref: PluginConfigRef) -> tuple[str, str]:
        team = await self._pg.fetchrow(_TEAM, ref.team_id)
        if team is None:
            raise PosthogApiError("Unable to determine project")
        organization_id = team["organization_id"]
        cached = self._keys.get(str(organization_id))
        if cached and time.monotonic() - cached[0] < KEY_CACHE_SECONDS:
            return team["api_token"], cached[1]
        key = await self._personal_key(organization_id, ref.team_id)
        self._keys[str(organization_id)] = (time.monotonic(), key)
        return team["api_token"], key

    async def _personal_key(self, organization_id: uuid.UUID, team_id: int) -> str:
        async with self._pg.acquire() as conn, conn.transaction():
            user_id = await conn.fetchval(_FIND_BOT, organization_id, BOT_EMAIL_DOMAIN)
            if user_id is None:
                email = f"{random.randrange(10**12)}{BOT_EMAIL_DOMAIN}"
                user_id = await conn.fetchval(
                    _CREATE_BOT, BOT_FIRST_NAME, uuid.uuid4(), email, organization_id, team_id
                )
                await conn.execute(_ADD_MEMBER, uuid.uuid4(), organization_id, user_id)
            key = await conn.fetchval(_FIND_KEY, user_id)
            if key is None:
                key = "phx_" + _base62(40)
                await conn.execute(_CREATE_KEY, _base62(40), user_id, key)
            return str(key)
