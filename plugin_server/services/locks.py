"""A cluster-wide Redis lock held by one server at a time (services §4.2).

Built on redis-py's asyncio `Lock` (SET NX PX with a random token; Lua extend and
release that check the token) on a connection of its own. Unlike the original, losing the
lock (a failed extension, or the local validity running out) calls `on_unlock` at once, so
the holder stops working before another instance can take over; errors never stop it from
competing again (services §10.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from prometheus_client import Gauge
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY

SCHEDULE_LOCK_KEY = "plugin-server:locks:schedule"
JOB_QUEUE_CONSUMER_LOCK_KEY = "plugin-server:locks:job-queue-consumer"

LOCK_HELD = Gauge(
    "plugin_server_lock_held", "1 while this server holds the cluster lock", ["lock"], registry=REGISTRY
)

log = get_logger(__name__)

Callback = Callable[[], Awaitable[None]]


class DistributedLock:
    """Competes for `key` until stopped; calls `on_lock` when it gets it and `on_unlock` when it
    loses or releases it. `held` is true only while the lock is known valid."""

    def __init__(
        self,
        redis: aioredis.Redis,
        key: str,
        ttl_seconds: float,
        *,
        on_lock: Callback,
        on_unlock: Callback,
        owns_connection: bool = True,
    ) -> None:
        self.key = key
        self._redis = redis
        self._owns_connection = owns_connection
        self._ttl = float(ttl_seconds)
        self._retry_delay = self._ttl / 10
        self._extend_delay = self._ttl / 2
        # The local view of expiry leaves room for clock drift, as redlock does.
        self._drift = 0.01 * self._ttl + 0.002
        self._on_lock = on_lock
        self._on_unlock = on_unlock
        self._lock = Lock(redis, key, timeout=self._ttl, blocking=False, thread_local=False)
        self._valid_until = 0.0
        self._holding = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def held(self) -> bool:
        return self._holding and time.monotonic() < self._valid_until

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"lock {self.key!r} already started")
        self._task = asyncio.create_task(self._compete(), name=f"lock:{self.key}")

    async def _compete(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if self._holding:
                    await self._extend()
                else:
                    await self._try_acquire()
                failures = 0
                delay = self._extend_delay if self._holding else self._retry_delay
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("lock error", lock=self.key, error=repr(exc))
                if self._holding:
                    await self._lose()
                # back off on repeated errors, never stop competing
                delay = min(self._retry_delay * 2 ** min(failures, 6), max(self._ttl, 1.0))
            await asyncio.sleep(delay)

    async def _try_acquire(self) -> None:
        started = time.monotonic()
        if not await self._lock.acquire(token=uuid.uuid4().hex):
            return
        self._valid_until = started + self._ttl - self._drift
        self._holding = True
        LOCK_HELD.labels(self.key).set(1)
        log.info("lock acquired", lock=self.key)
        try:
            await self._on_lock()
        except Exception:
            # a holder that cannot start its work must not keep others from doing it
            await self._release()
            raise

    async def _extend(self) -> None:
        started = time.monotonic()
        if started >= self._valid_until:
            log.error("lock expired before it could be extended", lock=self.key)
            await self._lose()
            return
        try:
            await self._lock.extend(self._ttl, replace_ttl=True)
        except (LockError, RedisError) as exc:
            log.error("lock lost", lock=self.key, error=repr(exc))
            await self._lose()
            return
        self._valid_until = started + self._ttl - self._drift

    async def _lose(self) -> None:
        self._holding = False
        self._valid_until = 0.0
        LOCK_HELD.labels(self.key).set(0)
        try:
            await self._on_unlock()
        except Exception as exc:
            log.error("lock release callback failed", lock=self.key, error=repr(exc))

    async def _release(self) -> None:
        was_holding = self._holding
        self._holding = False
        self._valid_until = 0.0
        LOCK_HELD.labels(self.key).set(0)
        if was_holding:
            with contextlib.suppress(LockError, RedisError, OSError):
                await self._lock.release()

    async def stop(self) -> None:
        """Stop competing; release the lock if held, then call `on_unlock`."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        was_holding = self._holding
        if was_holding:
            log.info("releasing lock", lock=self.key)
        await self._release()
        if self._owns_connection:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()
        if was_holding:
            try:
                await self._on_unlock()
            except Exception as exc:
                log.error("lock release callback failed", lock=self.key, error=repr(exc))
