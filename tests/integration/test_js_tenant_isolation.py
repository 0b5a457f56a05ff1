"""JS plugins of two organizations, through the running server: each config has its own V8
isolate, and nothing the host shares between isolates (the transpiler, the host services) lets
one reach another. Organization A's plugin walks everything reachable from its global object and
`meta` for organization B's secret config value and attachment contents, and finds none of it
(while it does find its own). Its requests carry no config identity the host would trust: the
host answers each isolate as the config it was created for."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from tests.factories import create_organization, create_plugin, create_plugin_config, create_team
from tests.integration.conftest import QUEUE, celery_event, runner_of, wait_until
from tests.integration.test_tenant_isolation import add_attachment

ORG_B = "0b0b0b0b-0000-4000-8000-00000000000b"

WALKER = """
function walk(roots, marker) {
    const seen = new Set()
    const stack = [...roots]
    const found = []
    while (stack.length && seen.size < 200000) {
        const value = stack.pop()
        if (typeof value === 'string') {
            if (value.includes(marker) && value !== marker) found.push(value.slice(0, 120))
            continue
        }
        if (value === null || (typeof value !== 'object' && typeof value !== 'function')) continue
        if (seen.has(value)) continue
        seen.add(value)
        if (value instanceof Uint8Array) {
            try {
                const text = String.fromCharCode(...value.slice(0, 4096))
                if (text.includes(marker)) found.push(text.slice(0, 120))
            } catch (e) {}
            continue
        }
        let names = []
        try { names = Reflect.ownKeys(value) } catch (e) {}
        for (const name of names) {
            try {
                const d = Object.getOwnPropertyDescriptor(value, name)
                if (d && 'value' in d) stack.push(d.value)
                else if (d && d.get) stack.push(d.get.call(value))
            } catch (e) {}
        }
        try { stack.push(Object.getPrototypeOf(value)) } catch (e) {}
        if (typeof value === 'function') {
            try { stack.push(value.toString()) } catch (e) {}
        }
    }
    return [found, seen.size]
}

export async function processEvent(event, meta) {
    const [foundB, walked] = walk([globalThis, meta, event], meta.config.marker)
    const [foundOwn] = walk([globalThis, meta], 'A-' + 'SECRET-')
    event.properties.walked = walked
    event.properties.found_b = foundB
    event.properties.found_own = [...new Set(foundOwn)].sort()
    return event
}
"""

VICTIM = """
export async function setupPlugin({ storage }) {
    await storage.set('mine', 'b-value')
}
export function processEvent(event) { return event }
"""


async def test_a_js_plugin_reaches_nothing_of_another_organizations_js_plugin(
    pg: asyncpg.Pool, team: int, redis: aioredis.Redis, settings: Settings, run_server: Any
) -> None:
    marker = "B-SECRET-" + uuid.uuid4().hex[:8]
    b_secret = f"{marker}-config-{secrets.token_hex(8)}"
    b_attachment = f"{marker}-attachment-{secrets.token_hex(8)}"
    a_secret = f"A-SECRET-config-{secrets.token_hex(8)}"
    await create_organization(pg, ORG_B)
    await create_team(pg, 3, organization_id=ORG_B)
    await create_plugin(pg, plugin_id=61, organization_id=ORG_B, name="victim", source=VICTIM)
    await create_plugin_config(pg, config_id=40, plugin_id=61, team_id=3, config={"apiKey": b_secret})
    await add_attachment(pg, 40, 3, b_attachment.encode())
    await create_plugin(pg, plugin_id=60, name="walker", source=WALKER)
    await create_plugin_config(pg, config_id=39, plugin_id=60, config={"marker": marker, "mine": a_secret})

    async with run_server(settings) as server:
        runner = runner_of(server)
        await runner.wait_loaded()
        assert runner.loaded[39].exports is not None and runner.loaded[40].exports is not None
        await redis.lpush(QUEUE, celery_event(1))

        async def attacked() -> Any:
            return await pg.fetchval("SELECT properties FROM posthog_event WHERE team_id = $1", team)

        props = await wait_until(attacked, within=60)
    props = json.loads(props) if isinstance(props, str) else props
    assert props["walked"] > 100
    assert a_secret in props["found_own"]  # the walk reaches what this config holds...
    assert props["found_b"] == []  # ...and nothing of the other organization's config
    assert await pg.fetchval(
        "SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = 40 AND key = 'mine'"
    ) == json.dumps("b-value")
