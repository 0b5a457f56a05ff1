"""Supervised services: a crashed loop is restarted; one that keeps crashing stops the server."""

from __future__ import annotations

import asyncio

from plugin_server.supervisor import Supervisor


class Flaky:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"crash {self.runs}")
        await self.stopped.wait()

    async def stop(self) -> None:
        self.stopped.set()


async def test_crashed_service_is_restarted() -> None:
    fatal: list[str] = []
    supervisor = Supervisor(fatal.append, base_backoff=0.01)
    service = Flaky(failures=2)
    supervisor.watch(service)
    for _ in range(200):
        if service.runs == 3:
            break
        await asyncio.sleep(0.01)
    assert service.runs == 3
    assert supervisor.is_running("flaky")
    await service.stop()
    await supervisor.stop()
    assert not supervisor.is_running("flaky")
    assert fatal == []


async def test_service_that_keeps_crashing_is_fatal() -> None:
    fatal: list[str] = []
    supervisor = Supervisor(fatal.append, max_restarts=3, base_backoff=0.001)
    service = Flaky(failures=1000)
    supervisor.watch(service)
    for _ in range(300):
        if fatal:
            break
        await asyncio.sleep(0.01)
    assert fatal == ["flaky"]
    assert service.runs == 4
    await supervisor.stop()
