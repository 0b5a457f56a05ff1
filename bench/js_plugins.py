"""JS plugin costs: per-event time of a trivial processEvent (one call at a time and many in
flight), and memory per loaded JS plugin config (V8 heap and process RSS)."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

from plugin_server.plugins.js.transpile import Transpiler
from plugin_server.plugins.js.vm import JSPluginVM, VMSpec

TRIVIAL = "export function processEvent(event) { event.properties.processed = true; return event }"


class NoHost:
    async def call(self, op: str, args: list[Any]) -> Any:
        return None

    def notify(self, op: str, args: list[Any]) -> None:
        return None


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def run() -> None:
    transpiler = Transpiler()
    event = {"event": "e", "distinct_id": "d", "team_id": 2, "properties": {"a": 1, "b": "x" * 100}}
    vm = await JSPluginVM.create(VMSpec(source=TRIVIAL, config={}), NoHost(), transpiler)
    for _ in range(200):
        await vm.call_method("processEvent", event)
    n = 3000
    started = time.perf_counter()
    for _ in range(n):
        await vm.call_method("processEvent", event)
    sequential = (time.perf_counter() - started) / n
    started = time.perf_counter()
    await asyncio.gather(*(vm.call_method("processEvent", event) for _ in range(n)))
    concurrent = (time.perf_counter() - started) / n
    print(f"trivial processEvent, one at a time: {sequential * 1e6:8.1f} µs/event")
    print(f"trivial processEvent, {n} in flight: {concurrent * 1e6:8.1f} µs/event")
    await vm.close()

    count = 20
    before = _rss_mb()
    started = time.perf_counter()
    vms = [
        await JSPluginVM.create(VMSpec(source=TRIVIAL, config={}), NoHost(), transpiler) for _ in range(count)
    ]
    created = (time.perf_counter() - started) / count
    heap = sum(v.memory_used() for v in vms) / count / 2**20
    rss = (_rss_mb() - before) / count
    print(f"create one JS plugin VM:            {created * 1e3:8.1f} ms")
    print(f"V8 heap used per plugin config:     {heap:8.2f} MB")
    print(f"process RSS per plugin config:      {rss:8.2f} MB  ({count} configs)")
    for v in vms:
        await v.close()
    transpiler.close()


def main(argv: list[str]) -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main([])
