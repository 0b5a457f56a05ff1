"""The scheduler and its cluster lock against real Redis (services §4, §9.2; plugins §6.9)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from plugin_server.services.locks import SCHEDULE_LOCK_KEY, DistributedLock
from plugin_server.services.scheduler import Scheduler
from tests.conftest import REDIS_URL
from tests.waiting import wait_for


def new_redis() -> aioredis.Redis:
    return aioredis.Redis.from_url(REDIS_URL)


class Tasks:
    """Scheduled tasks of loaded plugins: config 39 has runEveryMinute."""

    def __init__(self, *, delay: float = 0.0, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.counter = 0
        self.runs: list[tuple[int, str, float]] = []

    def scheduled_configs(self) -> Mapping[str, Sequence[int]]:
        return {"runEveryMinute": [39], "runEveryHour": [], "runEveryDay": []}

    async def run_scheduled_task(self, plugin_config_id: int, task: str) -> Any:
        self.runs.append((plugin_config_id, task, time.time()))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("task failed")
        self.counter += 1
        return self.counter


# Tests that dispatch by hand keep the clock's own ticks out of the count: these crons fire only
# at New Year, so a test running across a minute boundary sees no extra run.
HAND_DISPATCH_ONLY = {"runEveryMinute": "0 0 1 1 *", "runEveryHour": "0 0 1 1 *", "runEveryDay": "0 0 1 1 *"}


async def started_holder(tasks: Tasks, **kwargs: Any) -> Scheduler:
    kwargs.setdefault("crons", HAND_DISPATCH_ONLY)
    scheduler = Scheduler(tasks, new_redis(), lock_ttl_seconds=3, **kwargs)
    await scheduler.start()
    await wait_for(lambda: scheduler.lock.held)
    return scheduler


async def test_9_2_4_overlapping_runs_are_skipped(redis: aioredis.Redis) -> None:
    tasks = Tasks(delay=0.5)
    scheduler = await started_holder(tasks)
    try:
        for _ in range(3):
            await scheduler.dispatch("runEveryMinute")
        await asyncio.sleep(0.1)
        assert tasks.counter == 0
        await asyncio.sleep(0.5)
        assert tasks.counter == 1
        await scheduler.wait_for_pending()
    finally:
        await scheduler.stop()


async def test_9_2_5_failing_task_does_not_escape(redis: aioredis.Redis) -> None:
    tasks = Tasks(fail=True)
    scheduler = await started_holder(tasks)
    try:
        assert await scheduler.dispatch("runEveryMinute") == [39]
        await scheduler.wait_for_pending()
        assert len(tasks.runs) == 1
        # the next tick runs it again
        assert await scheduler.dispatch("runEveryMinute") == [39]
        await scheduler.wait_for_pending()
    finally:
        await scheduler.stop()


async def test_9_2_6_lock_hand_over_between_three_schedulers(redis: aioredis.Redis) -> None:
    locked: list[str] = []

    def lock(name: str) -> DistributedLock:
        async def on_lock() -> None:
            locked.append(name)

        async def on_unlock() -> None:
            return None

        return DistributedLock(new_redis(), SCHEDULE_LOCK_KEY, 3, on_lock=on_lock, on_unlock=on_unlock)

    a, b, c = lock("a"), lock("b"), lock("c")
    await a.start()
    await wait_for(lambda: a.held)
    await b.start()
    await c.start()
    await asyncio.sleep(0.5)
    assert locked == ["a"]
    assert not b.held and not c.held
    await a.stop()
    await wait_for(lambda: b.held or c.held, within=1.0)  # within about one retry delay (0.3 s)
    second, last = (b, c) if b.held else (c, b)
    assert not last.held
    await second.stop()
    await wait_for(lambda: last.held, within=1.0)
    await last.stop()
    assert len(locked) == 3
    assert await redis.get(SCHEDULE_LOCK_KEY) is None  # released on stop


async def test_lock_loss_stops_dispatch_at_once(redis: aioredis.Redis) -> None:
    tasks = Tasks()
    scheduler = Scheduler(tasks, new_redis(), lock_ttl_seconds=1, crons=HAND_DISPATCH_ONLY)
    await scheduler.start()
    try:
        await wait_for(lambda: scheduler.lock.held)
        assert await scheduler.dispatch("runEveryMinute") == [39]
        await scheduler.wait_for_pending()
        # another instance takes the key (e.g. after a Redis fail-over lost it)
        await redis.set(SCHEDULE_LOCK_KEY, "someone-else", px=60_000)
        await wait_for(lambda: not scheduler.lock.held, within=1.0)  # at the next extension (0.5 s)
        assert await scheduler.dispatch("runEveryMinute") == []
        assert len(tasks.runs) == 1
        # once the other holder is gone, it competes again and resumes
        await redis.delete(SCHEDULE_LOCK_KEY)
        await wait_for(lambda: scheduler.lock.held, within=2.0)
        assert await scheduler.dispatch("runEveryMinute") == [39]
    finally:
        await scheduler.stop()


async def test_lock_validity_runs_out_without_redis_answering(redis: aioredis.Redis) -> None:
    lock = DistributedLock(new_redis(), SCHEDULE_LOCK_KEY, 1, on_lock=_noop, on_unlock=_noop)
    await lock.start()
    try:
        await wait_for(lambda: lock.held)
        # freeze the competing loop: the local validity alone must end `held`
        assert lock._task is not None
        lock._task.cancel()
        await asyncio.sleep(1.05)
        assert not lock.held
    finally:
        await lock.stop()


async def _noop() -> None:
    return None


async def test_9_10_45_two_schedulers_run_each_period_once(redis: aioredis.Redis) -> None:
    """Two schedulers on their own Redis connections, ticking every second for ~3.5 s."""
    every_second = {"runEveryMinute": "* * * * * *"}
    hosts = [Tasks(), Tasks()]
    schedulers = [
        Scheduler(host, new_redis(), lock_ttl_seconds=2, crons=every_second, claim_redis=new_redis())
        for host in hosts
    ]
    for scheduler in schedulers:
        await scheduler.start()
    await asyncio.sleep(3.5)
    # hand the lock over mid-run: the other one continues, still once per period
    holder = next(s for s in schedulers if s.lock.held)
    await holder.stop()
    await asyncio.sleep(2.5)
    for scheduler in schedulers:
        await scheduler.stop()
    periods = Counter(int(t) for host in hosts for (_id, _task, t) in host.runs)
    assert sum(periods.values()) >= 4
    assert max(periods.values()) == 1, periods
    assert all(len(host.runs) > 0 for host in hosts)  # both held the lock at some point


async def test_9_2_7_schedule_comes_from_loaded_plugins_not_the_database(redis: aioredis.Redis) -> None:
    """The scheduler asks the loaded plugins at every tick; a database change alone changes nothing
    until the plugins are reloaded (the host's schedule only changes on reload)."""
    tasks = Tasks()
    scheduler = await started_holder(tasks)
    try:
        assert await scheduler.dispatch("runEveryDay") == []
        assert await scheduler.dispatch("runEveryMinute") == [39]
    finally:
        await scheduler.stop()
