"""Rows tests build on: a user, an organization and team 2, plugins and their configs.

The ids mirror the original test suite's fixtures (team 2, plugin 60, plugin config 39).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

ORGANIZATION_ID = "ca30f2ec-e9a4-4001-bf27-3ef194086068"
USER_ID = 1001
TEAM_ID = 2


async def insert_row(conn: asyncpg.Pool | asyncpg.Connection, table: str, row: dict[str, Any]) -> None:
    columns = ", ".join(f'"{key}"' for key in row)
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    await conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({params})", *row.values())


async def create_organization(
    pg: asyncpg.Pool, organization_id: str = ORGANIZATION_ID, *, plugins_access_level: int = 9
) -> str:
    await insert_row(
        pg,
        "posthog_organization",
        {
            "id": uuid.UUID(organization_id),
            "name": "TEST ORG",
            "plugins_access_level": plugins_access_level,
        },
    )
    return organization_id


async def create_user(pg: asyncpg.Pool, user_id: int = USER_ID) -> int:
    await insert_row(
        pg,
        "posthog_user",
        {
            "id": user_id,
            "uuid": uuid.uuid4(),
            "password": "gibberish",
            "first_name": "PluginTest",
            "last_name": "User",
            "email": f"test{user_id}@posthog.com",
            "distinct_id": f"plugin_test_user_distinct_id_{user_id}",
        },
    )
    return user_id


async def create_team(
    pg: asyncpg.Pool,
    team_id: int = TEAM_ID,
    *,
    organization_id: str | None = None,
    **columns: Any,
) -> int:
    """A team (and, the first time, its organization and a user)."""
    if organization_id is None:
        organization_id = ORGANIZATION_ID
        exists = await pg.fetchval(
            "SELECT 1 FROM posthog_organization WHERE id = $1", uuid.UUID(organization_id)
        )
        if not exists:
            await create_organization(pg, organization_id)
            await create_user(pg)
    row: dict[str, Any] = {
        "id": team_id,
        "uuid": uuid.uuid4(),
        "organization_id": uuid.UUID(organization_id),
        "api_token": f"THIS IS NOT A TOKEN FOR TEAM {team_id}",
        "name": "TEST PROJECT",
    }
    row.update(columns)
    await insert_row(pg, "posthog_team", row)
    return team_id


async def create_plugin(
    pg: asyncpg.Pool,
    *,
    plugin_id: int = 60,
    organization_id: str = ORGANIZATION_ID,
    name: str = "test-plugin",
    plugin_type: str = "source",
    source: str | None = None,
    archive: bytes | None = None,
    url: str | None = None,
    config_schema: Any = None,
    **columns: Any,
) -> int:
    row: dict[str, Any] = {
        "id": plugin_id,
        "organization_id": uuid.UUID(organization_id),
        "plugin_type": plugin_type,
        "name": name,
        "description": "a plugin made by a test",
        "url": url,
        "config_schema": config_schema or {},
        "tag": "0.0.1",
        "archive": archive,
        "source": source,
    }
    row.update(columns)
    await insert_row(pg, "posthog_plugin", row)
    return plugin_id


async def create_plugin_config(
    pg: asyncpg.Pool,
    *,
    config_id: int = 39,
    plugin_id: int = 60,
    team_id: int = TEAM_ID,
    enabled: bool = True,
    order: int = 0,
    config: dict[str, Any] | None = None,
) -> int:
    await insert_row(
        pg,
        "posthog_pluginconfig",
        {
            "id": config_id,
            "team_id": team_id,
            "plugin_id": plugin_id,
            "enabled": enabled,
            "order": order,
            "config": config or {},
        },
    )
    return config_id


def capture_message(
    event_uuid: str, seq: int, *, distinct_id: str, properties: dict[str, Any] | None = None
) -> bytes:
    """A Kafka message value as PostHog's capture endpoint produces it (spec §1.2.2): a
    `$pageview` of team 2 carrying `seq` (and `properties`)."""
    data = {"event": "$pageview", "properties": {"seq": seq, **(properties or {})}}
    return json.dumps(
        {
            "uuid": event_uuid,
            "distinct_id": distinct_id,
            "ip": "127.0.0.1",
            "site_url": "https://app.posthog.com",
            "data": json.dumps(data),
            "team_id": TEAM_ID,
            "now": "2021-10-28T12:00:01.123456+00:00",
            "sent_at": "2021-10-28T12:00:00.500000+00:00",
        }
    ).encode()
