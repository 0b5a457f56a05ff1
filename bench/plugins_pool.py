"""Per-event cost of a trivial process_event through the sandbox pool vs in-process, and memory
per sandbox and per loaded plugin config. Prints figures; asserts nothing.

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


async def memory(configs: int) -> tuple[float, float]:
    before = rss_mb()
    pool = SandboxPool(1, HostServices())
    await pool.start()
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
    return with_sandbox - before, (loaded - with_sandbox) / configs


async def run() -> None:
    print(f"in-process call:                          {in_process():7.2f} µs/event")
    for sandboxes in (1, 2):
        for batch in (1, 100, 500):
            per_event = await through_pool(sandboxes, batch)
            print(f"pool, {sandboxes} sandbox(es), {batch:>3} events/hand-over: {per_event:7.2f} µs/event")
    per_sandbox, per_config = await memory(50)
    print(
        f"memory: one sandbox ≈ {per_sandbox:.1f} MB; each loaded plugin config ≈ {per_config * 1024:.0f} kB"
    )


def main(argv: list[str]) -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main([])
