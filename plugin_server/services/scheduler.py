"""Runs plugins' runEveryMinute/Hour/Day once per cluster (services §4, plugins §3.6).

Only the server holding `plugin-server:locks:schedule` dispatches; it stops the moment the
lock is lost. Each period is also claimed with a Redis SET NX, so a lock hand-over exactly at
a tick cannot run a period twice. A run of a task for a config never overlaps the previous
run of the same task for that config. Cron times are UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial

import redis.asyncio as aioredis
from croniter import croniter
from prometheus_client import Counter

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.services.locks import SCHEDULE_LOCK_KEY, DistributedLock
from plugin_server.services.plugin_host import ScheduledTaskHost

CRONS: Mapping[str, str] = {
    "runEveryMinute": "* * * * *",
    "runEveryHour": "0 * * * *",
    "runEveryDay": "0 0 * * *",
}
PERIOD_CLAIM_PREFIX = "plugin-server:schedule-period:"

TASKS_DISPATCHED = Counter(
    "plugin_server_scheduled_tasks_dispatched_total",
    "Scheduled plugin tasks started",
    ["task"],
    registry=REGISTRY,
)
TASKS_SKIPPED = Counter(
    "plugin_server_scheduled_tasks_skipped_total",
    "Scheduled plugin tasks not started because the previous run was still going",
    ["task"],
    registry=REGISTRY,
)
TASK_ERRORS = Counter(
    "plugin_server_plugin_task_errors_total",
    "Plugin tasks and jobs that failed on the host side",
    ["kind", "task"],
    registry=REGISTRY,
)

log = get_logger(__name__)


class Scheduler:
    name = "scheduler"

    def __init__(
        self,
        tasks: ScheduledTaskHost,
        lock_redis: aioredis.Redis,
        *,
        lock_ttl_seconds: float,
        crons: Mapping[str, str] = CRONS,
        claim_redis: aioredis.Redis | None = None,
        stop_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tasks = tasks
        self._crons = dict(crons)
        self._claims = claim_redis if claim_redis is not None else lock_redis
        self._stop_timeout = stop_timeout
        self._clock = clock
        self.lock = DistributedLock(
            lock_redis, SCHEDULE_LOCK_KEY, lock_ttl_seconds, on_lock=self._on_lock, on_unlock=self._on_unlock
        )
        self._pending: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = False

    async def _on_lock(self) -> None:
        log.info("scheduler holds the schedule lock; dispatching")

    async def _on_unlock(self) -> None:
        log.info("scheduler lost or released the schedule lock; not dispatching")

    async def start(self) -> None:
        await self.lock.start()
        self._ticker = asyncio.create_task(self._tick_forever(), name="scheduler-ticks")

    async def _tick_forever(self) -> None:
        now = self._clock()
        next_fire = {task: self._next_after(expr, now) for task, expr in self._crons.items()}
        while not self._stopped:
            due_at = min(next_fire.values())
            await asyncio.sleep(max(0.0, due_at - self._clock()))
            now = self._clock()
            for task, fire_at in list(next_fire.items()):
                if fire_at <= now:
                    try:
                        await self.dispatch(task, period=fire_at)
                    except Exception as exc:  # a Redis hiccup must not end the schedule
                        log.error("scheduled dispatch failed", task=task, error=repr(exc))
                    next_fire[task] = self._next_after(self._crons[task], max(now, fire_at))

    @staticmethod
    def _next_after(expr: str, after: float) -> float:
        start = datetime.fromtimestamp(after, UTC)
        return float(croniter(expr, start).get_next(float))

    async def dispatch(self, task: str, *, period: float | None = None) -> list[int]:
        """Start `task` for every config that has it; returns the config ids started."""
        if self._stopped or not self.lock.held:
            return []
        if period is not None and not await self._claim_period(task, period):
            return []
        started = []
        for config_id in self._tasks.scheduled_configs().get(task, ()):
            key = (task, config_id)
            if key in self._pending:
                TASKS_SKIPPED.labels(task).inc()
                continue
            run = asyncio.create_task(self._run(task, config_id), name=f"{task}:{config_id}")
            self._pending[key] = run
            run.add_done_callback(partial(self._forget, key))
            TASKS_DISPATCHED.labels(task).inc()
            started.append(config_id)
        return started

    def _forget(self, key: tuple[str, int], _run: asyncio.Task[None]) -> None:
        self._pending.pop(key, None)

    async def _claim_period(self, task: str, period: float) -> bool:
        key = f"{PERIOD_CLAIM_PREFIX}{task}:{int(period)}"
        # expires well after any lock hand-over could re-dispatch the same period
        return bool(await self._claims.set(key, "1", nx=True, ex=3600))

    async def _run(self, task: str, config_id: int) -> None:
        try:
            await self._tasks.run_scheduled_task(config_id, task)
        except Exception as exc:
            TASK_ERRORS.labels("schedule", task).inc()
            log.error("scheduled task failed", task=task, plugin_config_id=config_id, error=repr(exc))

    async def wait_for_pending(self, within: float | None = None) -> None:
        runs = list(self._pending.values())
        if runs:
            await asyncio.wait(runs, timeout=within)

    async def stop(self) -> None:
        self._stopped = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.lock.stop()
        runs = list(self._pending.values())
        if runs:
            _done, late = await asyncio.wait(runs, timeout=self._stop_timeout)
            for run in late:
                log.warning("scheduled task still running at shutdown; cancelled", task=run.get_name())
                run.cancel()
            await asyncio.gather(*late, return_exceptions=True)
