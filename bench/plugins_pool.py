"""Per-event cost of a trivial process_event through the sandbox pool vs in-process, with 1, 10
and 100 organizations (each with its own sandbox) in rotation; a sandbox's start time, memory
while alive and memory the process keeps once it is closed; memory per loaded plugin config.
Prints figures; asserts nothing.

    .venv/bin/python -m bench plugins_pool
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from plugin_server.plugins.host_services import HostServices, PluginContext
from plugin_server.plugins.pool import SandboxPool

TRIVIAL = """
def process_event(event, meta):
    event["properties"]["processed"] = True
    return event
"""
EVENTS = 5000


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make_event(i: int) -> dict[str, Any]:
    return {
        "distinct_id": f"user-{i}",
        "ip": "127.0.0.1",
        "site_url": "http://localhost",
        "team_id": 2,
        "now": "2021-10-28T12:00:00Z",
        "event": "$pageview",
        "properties": {"$current_url": "http://localhost/", "seq": i},
        "timestamp": "2021-10-28T12:00:00Z",
    }


def in_process() -> float:
    namespace: dict[str, Any] = {}
    exec(TRIVIAL, namespace)
    fn = namespace["process_event"]
    events = [make_event(i) for i in range(EVENTS)]
    started = time.perf_counter()
    for event in events:
        fn(event, None)
    return (time.perf_counter() - started) / EVENTS * 1e6


async def through_pool(sandboxes: int, batch: int) -> float:
    pool = SandboxPool(sandboxes, HostServices())
    await pool.start()
    context = PluginContext(1, 1, 2, "bench")
    pool.register("1:1", {"plugin_config_id": 1, "team_id": 2, "config": {}, "timeout": 30}, TRIVIAL, context)
    await pool.load("1:1")
    events = [[make_event(i)] for i in range(EVENTS)]
    await pool.call("1:1", "process_event", events[:500], 30)  # warm up, lazy loads
    started = time.perf_counter()
    if batch == 1:
        for args in events[:1000]:
            await pool.call("1:1", "process_event", [args], 30)
        count = 1000
    else:
        for start in range(0, EVENTS, batch):
            await pool.call("1:1", "process_event", events[start : start + batch], 30)
        count = EVENTS
    elapsed = time.perf_counter() - started
    await pool.stop()
    return elapsed / count * 1e6


def register_tenants(pool: SandboxPool, tenants: int, source: str = TRIVIAL) -> list[str]:
    keys = []
    for n in range(tenants):
        key = f"{n}:bench"
        spec = {"plugin_config_id": n, "team_id": n, "config": {}, "timeout": 30}
        pool.register(key, spec, source, PluginContext(n, n, n, "bench"), f"org:{n}")
        keys.append(key)
    return keys


async def tenants_in_rotation(tenants: int, batch: int) -> float:
    """µs/event when the events of `tenants` organizations arrive in turn (all sandboxes alive)."""
    pool = SandboxPool(1, HostServices(), max_alive=tenants)
    await pool.start()
    keys = register_tenants(pool, tenants)
    for key in keys:  # start every tenant's sandbox first: this measures the steady state
        await pool.load(key)
    events = [[make_event(i)] for i in range(batch)]
    rounds = max(1, 2000 // (tenants * batch))
    started = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            await pool.call(key, "process_event", events, 30)
    elapsed = time.perf_counter() - started
    await pool.stop()
    return elapsed / (rounds * tenants * batch) * 1e6


async def sandbox_costs(count: int = 20) -> tuple[float, float, float]:
    """(ms to start a sandbox and load a small config into it, MB per live sandbox, MB the process
    keeps per sandbox closed)."""
    pool = SandboxPool(1, HostServices(), max_alive=count)
    await pool.start()
    warm = register_tenants(pool, 1)
    await pool.load(warm[0])  # the runtime bundle is compiled once, on the first start
    await pool.stop()
    pool = SandboxPool(1, HostServices(), max_alive=count)
    await pool.start()
    keys = register_tenants(pool, count)
    before = rss_mb()
    started = time.perf_counter()
    for key in keys:
        outcome = await pool.load(key)
        assert outcome.ok, outcome.error
    start_ms = (time.perf_counter() - started) / count * 1000
    await asyncio.sleep(0.5)
    alive = rss_mb()
    await pool.stop()
    await asyncio.sleep(0.5)
    kept = rss_mb()
    return start_ms, (alive - before) / count, (kept - before) / count


async def memory(configs: int) -> float:
    pool = SandboxPool(1, HostServices())
    await pool.start()
    pool.register(
        "base:1",
        {"plugin_config_id": 0, "team_id": 2, "config": {}, "timeout": 30},
        TRIVIAL,
        PluginContext(0, 0, 2, "bench"),
    )
    await pool.load("base:1")
    await asyncio.sleep(0.2)
    with_sandbox = rss_mb()
    for n in range(configs):
        source = TRIVIAL + f"\nSTATE = {{'n': {n}}}\nimport json, re, datetime\n"
        pool.register(
            f"{n}:1",
            {"plugin_config_id": n, "team_id": 2, "config": {}, "timeout": 30},
            source,
            PluginContext(n, n, 2, "bench"),
        )
        await pool.load(f"{n}:1")
    loaded = rss_mb()
    await pool.stop()
    return (loaded - with_sandbox) / configs


async def run() -> None:
    print(f"in-process call:                          {in_process():7.2f} µs/event")
    for sandboxes in (1, 2):
        for batch in (1, 100, 500):
            per_event = await through_pool(sandboxes, batch)
            print(f"pool, {sandboxes} sandbox(es), {batch:>3} events/hand-over: {per_event:7.2f} µs/event")
    for tenants in (1, 10, 100):
        for batch in (1, 100):
            per_event = await tenants_in_rotation(tenants, batch)
            label = f"{tenants:>3} organizations in rotation, {batch:>3} events/hand-over:"
            print(f"{label} {per_event:7.2f} µs/event")
    start_ms, per_sandbox, kept = await sandbox_costs()
    print(
        f"sandbox start + first load: {start_ms:.1f} ms; memory per live sandbox ≈ {per_sandbox:.1f} MB; "
        f"kept by the process per closed sandbox ≈ {kept:.1f} MB"
    )
    per_config = await memory(50)
    print(f"memory per loaded plugin config ≈ {per_config * 1024:.0f} kB")


def main(argv: list[str]) -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main([])
