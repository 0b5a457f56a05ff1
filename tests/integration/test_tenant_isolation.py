"""One organization's Python plugin cannot reach another organization's, through the running
server: organization A's plugin walks every object it can reach looking for organization B's
secret config value and attachment contents, and forges host requests with B's plugin config
key (the test hands A that key, as if it had guessed it). Nothing of B is found or changed, and
every forged request is refused and counted."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.metrics import REGISTRY
from plugin_server.plugins.registry import fetch_plugin_configs
from tests.factories import (
    ORGANIZATION_ID,
    create_organization,
    create_plugin,
    create_plugin_config,
    create_team,
)
from tests.integration.conftest import QUEUE, celery_event, runner_of, wait_until
from tests.plugins.conftest import add_python_plugin, py_source

ORG_B = "0b0b0b0b-0000-4000-8000-00000000000b"
TEAM_B = 3
CONFIG_B = 40
PLUGIN_B = 61

# The attacker. `meta.config["marker"]` is the prefix of B's secrets (not a secret itself: A
# finding strings that merely equal it proves nothing); A's own secrets start with "A-SECRET-".
ATTACKER = r'''
import asyncio
import typing

sys = typing.sys
OWN_PREFIX = "A-" + "SECRET-"


def _gc():
    gc = sys.modules.get("gc")
    if gc is None:
        try:
            gc = sys.modules["builtins"].__import__("gc")
        except BaseException:
            return None
    return gc


EXTRA = (
    "__dict__", "__self__", "__func__", "__globals__", "__closure__", "__wrapped__", "__builtins__",
    "__code__", "cell_contents", "f_back", "f_locals", "f_globals", "gi_frame", "cr_frame",
    "ag_frame", "cr_await", "tb_frame", "tb_next", "__subclasses__", "_result", "_exception",
)


def walk(roots, marker, limit=400_000):
    """Every object reachable from `roots`; strings and bytes holding `marker` are returned."""
    gc = _gc()
    seen = set()
    stack = list(roots)
    found = []
    tried = {"get_referents": 0, "get_objects": "refused"}
    if gc is not None:
        try:
            stack.extend(gc.get_objects())
            tried["get_objects"] = "allowed"
        except BaseException as exc:
            tried["get_objects"] = type(exc).__name__
    needle = marker.encode()
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            if marker in obj and obj != marker:
                found.append(obj[:120])
            continue
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if needle in bytes(obj):
                found.append(bytes(obj)[:120].decode("utf-8", "replace"))
            continue
        if isinstance(obj, (int, float, complex, bool, type(None))):
            continue
        try:
            if isinstance(obj, dict):
                stack.extend(obj.keys())
                stack.extend(obj.values())
            elif isinstance(obj, (list, tuple, set, frozenset)):
                stack.extend(obj)
        except BaseException:
            pass
        try:
            names = {n for n in dir(obj) if not n.startswith("__")} | set(EXTRA)
        except BaseException:
            names = set(EXTRA)
        for name in names:
            try:
                value = getattr(obj, name)
            except BaseException:
                continue
            if name == "__subclasses__":
                try:
                    value = value()
                except BaseException:
                    continue
            if id(value) not in seen:
                stack.append(value)
        try:
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    try:
                        stack.append(getattr(obj, slot))
                    except BaseException:
                        pass
        except BaseException:
            pass
        if gc is not None:
            try:
                stack.extend(gc.get_referents(obj))
                tried["get_referents"] += 1
            except BaseException:
                pass
    return found, len(seen), tried


def roots(meta):
    frames = []
    frame = sys._getframe()
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    loop = asyncio.get_running_loop()
    tasks = list(asyncio.all_tasks())
    return [
        meta, globals(), sys.modules, frames, tasks, [t.get_coro() for t in tasks], loop,
        __builtins__, print, asyncio, typing, sys.modules.get("posthog_plugin"),
        vars(type(meta)), meta._request, getattr(meta._request, "__self__", None),
    ]


def find_runtime(meta):
    """The sandbox runtime object (what sends requests to the host), via meta's closure."""
    for cell in meta._request.__closure__ or ():
        value = cell.cell_contents
        if hasattr(value, "request") and hasattr(value, "notify"):
            return value
    return None


async def attempt(results, name, make):
    try:
        value = await asyncio.wait_for(make(), 10)
        results[name] = ["accepted", repr(value)[:300]]
    except BaseException as exc:
        results[name] = ["refused", type(exc).__name__, str(exc)[:300]]


async def process_event(event, meta):
    props = event["properties"]
    own_key = None
    runtime = find_runtime(meta)
    for cell in meta._request.__closure__ or ():
        if isinstance(cell.cell_contents, str):
            own_key = cell.cell_contents
    found, walked, tried = walk(roots(meta), meta.config["marker"])
    own_found, _, _ = walk(roots(meta), OWN_PREFIX)
    props["walked"] = walked
    props["gc"] = tried
    props["found_b"] = found[:20]
    props["found_own"] = sorted(set(own_found))[:20]

    victim = props.get("victim_key")
    results = {}
    if victim and runtime is not None:
        r = lambda name, args: (lambda: runtime.request(victim, name, args))
        await attempt(results, "storage.get", r("storage.get", ["mine"]))
        await attempt(results, "storage.set", r("storage.set", ["mine", '"pwned"']))
        await attempt(results, "cache.get", r("cache.get", ["mine"]))
        await attempt(results, "cache.set", r("cache.set", ["mine", '"pwned"', None]))
        await attempt(results, "posthog.api", r("posthog.api", ["GET", "/api/projects/@current", {}]))
        await attempt(results, "posthog.capture", r("posthog.capture", ["forged by A", {"x": 1}]))
        guessed = victim.split(":")[0] + ":1"  # the old counter-style key
        await attempt(results, "guessed key", lambda: runtime.request(guessed, "storage.get", ["mine"]))
        runtime.notify(victim, "console", ["LOG", "forged by A"])
        runtime.notify(victim, "metrics.update", ["forged", "sum", 1])
        # rewrite the key in meta's own request closure: meta then asks in B's name
        for cell in meta._request.__closure__:
            if cell.cell_contents == own_key:
                cell.cell_contents = victim
        await attempt(results, "closure storage.get", lambda: meta.storage.get("mine"))
        await attempt(results, "closure storage.set", lambda: meta.storage.set("mine", "pwned"))
        await attempt(results, "closure cache.get", lambda: meta.cache.get("mine"))
        await attempt(results, "closure posthog.api", lambda: meta.posthog.api.get("/api/projects/@current"))
        await attempt(results, "closure capture", lambda: meta.posthog.capture("forged by A", {}))
        meta.console.log("forged by A through the closure")
        for cell in meta._request.__closure__:
            if cell.cell_contents == victim:
                cell.cell_contents = own_key
    props["runtime_found"] = runtime is not None
    props["forged"] = results
    return event
'''

VICTIM = """
async def setup_plugin(meta):
    await meta.storage.set("mine", "b-value")
    await meta.cache.set("mine", "b-value")

def process_event(event, meta):
    return event
"""


def refused(service: str) -> float:
    labels = {"reason": "foreign", "service": service}
    return REGISTRY.get_sample_value("plugin_server_sandbox_requests_refused_total", labels) or 0.0


def refused_total() -> float:
    services = ("storage.get", "storage.set", "cache.get", "cache.set", "posthog.api")
    return sum(refused(s) for s in (*services, "posthog.capture", "console", "metrics.update"))


async def add_attachment(pg: asyncpg.Pool, config_id: int, team_id: int, contents: bytes) -> None:
    await pg.execute(
        "INSERT INTO posthog_pluginattachment (plugin_config_id, team_id, key, content_type, file_name,"
        " file_size, contents) VALUES ($1, $2, 'keyfile', 'text/plain', 'key.txt', $3, $4)",
        config_id,
        team_id,
        len(contents),
        contents,
    )


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_plugin_finds_and_forges_nothing_of_another_organization(
    pg: asyncpg.Pool,
    team: int,
    redis: aioredis.Redis,
    settings: Settings,
    run_server: Any,
    workers: int,
) -> None:
    marker = "B-SECRET-" + uuid.uuid4().hex[:8]
    b_config_secret = f"{marker}-config-{secrets.token_hex(8)}"
    b_attachment_secret = f"{marker}-attachment-{secrets.token_hex(8)}"
    a_secret = f"A-SECRET-config-{secrets.token_hex(8)}"
    a_attachment = f"A-SECRET-attachment-{secrets.token_hex(8)}"

    await create_organization(pg, ORG_B)
    await create_team(pg, TEAM_B, organization_id=ORG_B)
    await create_plugin(
        pg, plugin_id=PLUGIN_B, organization_id=ORG_B, name="victim", source=py_source(VICTIM)
    )
    await create_plugin_config(
        pg, config_id=CONFIG_B, plugin_id=PLUGIN_B, team_id=TEAM_B, config={"apiKey": b_config_secret}
    )
    await add_attachment(pg, CONFIG_B, TEAM_B, b_attachment_secret.encode())
    await add_python_plugin(pg, ATTACKER, config={"marker": marker, "mine": a_secret})
    await add_attachment(pg, 39, team, a_attachment.encode())
    before = refused_total()

    async with run_server(settings.replace(worker_concurrency=workers, task_timeout=60.0)) as server:
        runner = runner_of(server)
        await runner.wait_loaded()
        victim = runner.loaded[CONFIG_B]
        assert victim.exports is not None and runner.loaded[39].exports is not None
        # B is loaded (its secrets are in a sandbox of this process) while A runs
        assert runner.pool.loaded_in(victim.key)
        await redis.lpush(QUEUE, celery_event(1, victim_key=victim.key))

        async def attacked() -> Any:
            return await pg.fetchval("SELECT properties FROM posthog_event WHERE team_id = $1", team)

        props = await wait_until(attacked, within=90)
        props = json.loads(props) if isinstance(props, str) else props
        # the walk worked: it reached A's own secret config value and attachment...
        assert "walked" in props, await pg.fetchval("SELECT error FROM posthog_pluginconfig WHERE id = 39")
        assert props["walked"] > 10_000
        assert set(props["found_own"]) >= {a_secret, a_attachment}, props["found_own"]
        # ...and found nothing of B
        assert props["found_b"] == [], props
        assert props["runtime_found"] is True
        forged = props["forged"]
        assert len(forged) == 12
        for name, outcome in forged.items():
            assert outcome[0] == "refused", (name, outcome)
        assert forged["storage.get"][1] == "PermissionError"
        assert forged["closure posthog.api"][1] == "PermissionError"

        # every forged request, notifications included, was refused and counted
        await wait_until(lambda: _at_least(refused_total, before + 15), within=20)
        pool = runner.pool
        a_sandboxes = [s for s in pool.sandboxes if runner.loaded[39].key in s.loaded]
        b_sandboxes = pool.loaded_in(victim.key)
        assert a_sandboxes and b_sandboxes and not set(a_sandboxes) & set(b_sandboxes)

    # B's data is unchanged; nothing was written, logged, captured or provisioned in B's name
    assert await pg.fetchval(
        "SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = $1 AND key = 'mine'", CONFIG_B
    ) == json.dumps("b-value")
    assert await redis.get(f"@plugin/{PLUGIN_B}/{TEAM_B}/mine") == b'"b-value"'
    assert await pg.fetchval("SELECT count(*) FROM posthog_event WHERE event = 'forged by A'") == 0
    assert await pg.fetchval("SELECT count(*) FROM posthog_pluginlogentry WHERE message LIKE '%forged%'") == 0
    bots = await pg.fetchval(
        "SELECT count(*) FROM posthog_user u JOIN posthog_organizationmembership m ON m.user_id = u.id"
        " WHERE m.organization_id = $1",
        uuid.UUID(ORG_B),
    )
    assert bots == 0
    assert await pg.fetchval("SELECT count(*) FROM posthog_personalapikey") == 0


async def _at_least(value: Any, expected: float) -> bool:
    return bool(value() >= expected)


async def test_a_global_plugin_runs_as_the_organization_of_each_team_that_enabled_it(
    pg: asyncpg.Pool, team: int
) -> None:
    await create_organization(pg, ORG_B)
    await create_team(pg, TEAM_B, organization_id=ORG_B)
    # organization A's global plugin, enabled by A's team and by B's team
    await create_plugin(pg, plugin_id=PLUGIN_B, name="global", source=py_source(VICTIM), is_global=True)
    await create_plugin_config(pg, config_id=39, plugin_id=PLUGIN_B, team_id=team)
    await create_plugin_config(pg, config_id=CONFIG_B, plugin_id=PLUGIN_B, team_id=TEAM_B)
    configs = (await fetch_plugin_configs(pg)).configs
    assert configs[CONFIG_B].tenant == f"org:{ORG_B}"
    assert configs[39].tenant == f"org:{ORGANIZATION_ID}"
