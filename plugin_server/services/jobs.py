"""Plugin jobs: `meta.jobs.<name>(payload).run_in/run_at/run_now` (plugins §3.7, services §5).

Jobs live in the graphile_worker schema (task `pluginJob`, payload = the EnqueuedJob JSON), so
Node and Python servers can share a queue. Only the holder of the Redis lock
`plugin-server:locks:job-queue-consumer` consumes. Consumption is at least once: a job is
completed only after its handler returned, and a handler that raises (JobRetry, or a failure of
the host) has the job retried with graphile's back-off (e^attempts s), up to `max_attempts`.
New jobs wake the consumer at once through LISTEN jobs:insert.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.services import job_queries as q
from plugin_server.services.locks import JOB_QUEUE_CONSUMER_LOCK_KEY, DistributedLock
from plugin_server.services.plugin_host import JobHost, WorkerLoad

NOTIFY_CHANNEL = "jobs:insert"
NO_JOB_QUEUE = "No JobQueue available"
DEFAULT_MAX_ATTEMPTS = 10

JOBS_ENQUEUED = Counter(
    "plugin_server_jobs_enqueued_total", "Plugin jobs enqueued", ["backend"], registry=REGISTRY
)
JOBS_DISPATCHED = Counter(
    "plugin_server_jobs_dispatched_total", "Plugin jobs handed to their plugin", registry=REGISTRY
)
JOBS_FAILED = Counter(
    "plugin_server_jobs_failed_total",
    "Plugin job runs that failed and were left for a retry (or gave up)",
    ["outcome"],
    registry=REGISTRY,
)
QUEUE_PAUSED = Gauge(
    "plugin_server_queue_paused", "1 while a consumer is paused", ["queue"], registry=REGISTRY
)

log = get_logger(__name__)

_MS = {
    "milliseconds": 1,
    "seconds": 1000,
    "minutes": 60_000,
    "hours": 3_600_000,
    "days": 86_400_000,
    "weeks": 7 * 86_400_000,
    "quarters": 13 * 7 * 86_400_000,
    "years": 365 * 86_400_000,
}


def unit_ms(unit: str, *, js_months: bool = False) -> int:
    """Length of a run_in unit in ms; singular or plural. JS plugins keep the original's
    month of 30 weeks, Python plugins get 30 days (plugins §8.3)."""
    normalized = unit if unit.endswith("s") else unit + "s"
    if normalized == "months":
        return (30 * 7 if js_months else 30) * 86_400_000
    try:
        return _MS[normalized]
    except KeyError:
        raise ValueError(f"Unknown time unit: {normalized}") from None


@dataclass(frozen=True, slots=True)
class EnqueuedJob:
    type: str
    payload: Any
    timestamp: int  # epoch ms at which the job becomes due
    plugin_config_id: int
    plugin_config_team: int

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "pluginConfigId": self.plugin_config_id,
            "pluginConfigTeam": self.plugin_config_team,
        }

    @classmethod
    def from_json(cls, data: Any) -> EnqueuedJob:
        if not isinstance(data, dict):
            raise ValueError("a job is a JSON object")
        try:
            return cls(
                type=str(data["type"]),
                payload=data.get("payload"),
                timestamp=int(data["timestamp"]),
                plugin_config_id=int(data["pluginConfigId"]),
                plugin_config_team=int(data["pluginConfigTeam"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a plugin job: {exc!r}") from None


def job_from_celery_plugin_job(args: Sequence[Any], now_ms: int | None = None) -> EnqueuedJob:
    """The Celery task `posthog.tasks.plugins.plugin_job` with args
    [team_id, plugin_config_id, job_type, job_op, job_payload] (services §5.1)."""
    team_id, config_id, job_type, job_op, payload = args
    payload = dict(payload or {})
    payload["$operation"] = job_op
    timestamp = now_ms if now_ms is not None else int(time.time() * 1000)
    return EnqueuedJob(str(job_type), payload, timestamp, int(config_id), int(team_id))


JobHandler = Callable[[EnqueuedJob], Awaitable[None]]


class JobQueueBackend(Protocol):
    kind: str

    async def connect_producer(self) -> None: ...

    async def enqueue(self, job: EnqueuedJob) -> None: ...

    async def start_consumer(self, handler: JobHandler) -> None: ...

    async def stop_consumer(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    async def disconnect(self) -> None: ...


class GraphileJobQueue:
    """Producer and consumer on the graphile_worker tables."""

    kind = "graphile"

    def __init__(
        self,
        *,
        schema: str,
        dsn: str | None = None,
        pool: asyncpg.Pool | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        concurrency: int = 4,
        poll_interval: float = 1.0,
        job_expiry: timedelta = timedelta(hours=4),
        stop_timeout: float = 30.0,
    ) -> None:
        if pool is None and dsn is None:
            raise ValueError("a job queue needs a pool or a dsn")
        self._dsn = dsn
        self._pool = pool
        self._owns_pool = pool is None
        self._sql = {name: getattr(q, name).format(schema=_quote_ident(schema)) for name in _QUERY_NAMES}
        self._max_attempts = max_attempts
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._job_expiry = job_expiry
        self._stop_timeout = stop_timeout
        self._handler: JobHandler | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._worker_ids: list[str] = []
        self._listener: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._consuming = False

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            assert self._dsn is not None
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=5, timeout=5)
        return self._pool

    async def connect_producer(self) -> None:
        pool = await self._get_pool()
        version = await pool.fetchval(self._sql["SCHEMA_VERSION"])
        if version != 8:
            raise RuntimeError(f"job queue schema not migrated (at {version}); run --migrate")

    async def enqueue(self, job: EnqueuedJob) -> None:
        pool = await self._get_pool()
        await pool.fetchval(
            self._sql["ADD_JOB"], json.dumps(job.to_json()), job.timestamp, self._max_attempts
        )
        JOBS_ENQUEUED.labels(self.kind).inc()

    async def start_consumer(self, handler: JobHandler) -> None:
        if self._consuming:
            return
        pool = await self._get_pool()
        self._handler = handler
        self._consuming = True
        self._worker_ids = [f"worker-{secrets.token_hex(9)}" for _ in range(self._concurrency)]
        await pool.execute(self._sql["UNLOCK_ABANDONED"], self._worker_ids)
        self._listener = await pool.acquire()
        await self._listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._workers = [
            asyncio.create_task(self._work(worker_id), name=f"job-worker:{worker_id}")
            for worker_id in self._worker_ids
        ]
        log.info("job queue consumer started", backend=self.kind, workers=len(self._workers))

    def _on_notify(self, *_args: Any) -> None:
        self._wake.set()

    async def _work(self, worker_id: str) -> None:
        pool = await self._get_pool()
        failures = 0
        while self._consuming:
            await self._running.wait()
            if not self._consuming:
                return
            try:
                row = await pool.fetchrow(self._sql["GET_JOB"], worker_id, self._job_expiry)
                failures = 0
            except (asyncpg.PostgresError, OSError) as exc:
                # never stop polling on a read error: log, back off, go on (services §10.6)
                failures += 1
                log.warning("could not fetch a job", error=repr(exc))
                await asyncio.sleep(min(0.2 * 2**failures, 10.0))
                continue
            if row is None:
                await self._idle(pool)
                continue
            await self._run(pool, worker_id, row)

    async def _idle(self, pool: asyncpg.Pool) -> None:
        """Sleep until a job is inserted, the next one is due, or the poll interval passes."""
        self._wake.clear()
        wait = self._poll_interval
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            seconds = await pool.fetchval(self._sql["NEXT_RUN_AT"])
            if seconds is not None:
                wait = max(0.0, min(wait, float(seconds)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _run(self, pool: asyncpg.Pool, worker_id: str, row: asyncpg.Record) -> None:
        job_id = row["id"]
        try:
            job = EnqueuedJob.from_json(json.loads(row["payload"]))
        except ValueError as exc:
            log.error("unreadable job; kept without retries", job_id=job_id, error=str(exc))
            await pool.execute(self._sql["GIVE_UP_JOB"], job_id, f"unreadable job: {exc}")
            return
        assert self._handler is not None
        JOBS_DISPATCHED.inc()
        try:
            await self._handler(job)
        except asyncio.CancelledError:
            # stopping: the row stays locked by this worker id and is unlocked by the next consumer
            raise
        except Exception as exc:
            await self._fail(pool, worker_id, job_id, job, exc)
            return
        await pool.fetchval(self._sql["COMPLETE_JOB"], worker_id, job_id)

    async def _fail(
        self, pool: asyncpg.Pool, worker_id: str, job_id: int, job: EnqueuedJob, exc: Exception
    ) -> None:
        message = f"{type(exc).__name__}: {exc}"
        row = await pool.fetchrow(self._sql["FAIL_JOB"], worker_id, job_id, message)
        gave_up = row is not None and row["attempts"] >= row["max_attempts"]
        JOBS_FAILED.labels("gave_up" if gave_up else "retry").inc()
        log.warning(
            "plugin job failed" + ("; giving up" if gave_up else "; will retry"),
            job_type=job.type,
            plugin_config_id=job.plugin_config_id,
            error=message,
            attempts=row["attempts"] if row else None,
        )

    def pause(self) -> None:
        self._running.clear()
        QUEUE_PAUSED.labels("jobs").set(1)

    def resume(self) -> None:
        self._running.set()
        QUEUE_PAUSED.labels("jobs").set(0)

    async def stop_consumer(self) -> None:
        if not self._consuming:
            return
        self._consuming = False
        self._running.set()
        self._wake.set()
        workers, self._workers = self._workers, []
        if workers:
            # let handlers in flight finish (their jobs complete normally), up to the budget
            _done, late = await asyncio.wait(workers, timeout=self._stop_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if self._listener is not None and self._pool is not None:
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await self._listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            await self._pool.release(self._listener)
            self._listener = None
        log.info("job queue consumer stopped", backend=self.kind)

    async def disconnect(self) -> None:
        await self.stop_consumer()
        if self._owns_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None


_QUERY_NAMES = (
    "ADD_JOB",
    "GET_JOB",
    "COMPLETE_JOB",
    "FAIL_JOB",
    "GIVE_UP_JOB",
    "NEXT_RUN_AT",
    "UNLOCK_ABANDONED",
    "SCHEMA_VERSION",
)


SCHEMA_MIGRATION = Path(__file__).parent.parent / "db" / "migrations" / "0040_graphile_worker.sql"
# pg_advisory_lock key for job-queue schema installs (any constant shared by all instances)
_SCHEMA_LOCK_KEY = 0x6A6F62735F716C6B


async def migrate_job_queue(dsn: str, schema: str) -> None:
    """Install the job queue schema in a database of its own (JOB_QUEUE_GRAPHILE_URL), once,
    under an advisory lock; a no-op when it is there already."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", schema):
        raise ValueError(f"invalid schema name {schema!r}")
    sql = SCHEMA_MIGRATION.read_text().replace("{graphile_schema}", schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _SCHEMA_LOCK_KEY)
        try:
            async with conn.transaction():
                await conn.execute(sql)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _SCHEMA_LOCK_KEY)
    finally:
        await conn.close()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class UnsupportedJobQueue:
    """A backend this server does not implement; connecting it fails with a clear message."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def connect_producer(self) -> None:
        raise RuntimeError(f'job queue "{self.kind}" is not supported by this server; use "graphile"')

    async def enqueue(self, job: EnqueuedJob) -> None:
        raise RuntimeError(f'job queue "{self.kind}" is not connected')

    async def start_consumer(self, handler: JobHandler) -> None:
        return None

    async def stop_consumer(self) -> None:
        return None

    def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    async def disconnect(self) -> None:
        return None


class JobQueueError(RuntimeError):
    pass


class JobQueueManager:
    """The configured backends in JOB_QUEUES order: enqueue tries them in turn."""

    name = "job-queues"

    def __init__(self, backends: Sequence[JobQueueBackend], *, crash_if_none: bool = False) -> None:
        self.configured_kinds = [b.kind for b in backends]
        self._backends = list(backends)
        self._crash_if_none = crash_if_none

    @property
    def connected_kinds(self) -> list[str]:
        return [b.kind for b in self._backends]

    async def connect(self) -> None:
        results = await asyncio.gather(
            *(b.connect_producer() for b in self._backends), return_exceptions=True
        )
        connected = []
        for backend, result in zip(self._backends, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("job queue producer could not connect", backend=backend.kind, error=repr(result))
                if self._crash_if_none:
                    raise JobQueueError(f'job queue "{backend.kind}" could not connect: {result}') from result
            else:
                log.info("connected to job queue producer", backend=backend.kind)
                connected.append(backend)
        self._backends = connected

    async def start(self) -> None:
        await self.connect()

    async def stop(self) -> None:
        await self.disconnect()

    async def enqueue(self, job: EnqueuedJob) -> None:
        for backend in self._backends:
            try:
                await backend.enqueue(job)
                return
            except Exception as exc:
                log.error("could not enqueue job", backend=backend.kind, job=job.to_json(), error=repr(exc))
        raise JobQueueError(NO_JOB_QUEUE)

    async def start_consumers(self, handler: JobHandler) -> None:
        await asyncio.gather(*(b.start_consumer(handler) for b in self._backends))

    async def stop_consumers(self) -> None:
        await asyncio.gather(*(b.stop_consumer() for b in self._backends), return_exceptions=True)

    def pause(self) -> None:
        for backend in self._backends:
            backend.pause()

    def resume(self) -> None:
        for backend in self._backends:
            backend.resume()

    @property
    def paused(self) -> bool:
        """The job consumer waits for the plugin workers to drain (back-pressure)."""
        return any(getattr(backend, "paused", False) for backend in self._backends)

    async def disconnect(self) -> None:
        await asyncio.gather(*(b.disconnect() for b in self._backends), return_exceptions=True)


def build_job_queues(
    kinds: Sequence[str],
    *,
    schema: str,
    dsn: str | None,
    pool: asyncpg.Pool | None,
    crash_if_none: bool,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> JobQueueManager:
    """Backends for JOB_QUEUES; an empty JOB_QUEUE_GRAPHILE_URL (dsn None) shares the main pool."""
    backends: list[JobQueueBackend] = []
    for kind in kinds:
        if kind == "graphile":
            backends.append(
                GraphileJobQueue(
                    schema=schema, dsn=dsn, pool=None if dsn else pool, max_attempts=max_attempts
                )
            )
        else:
            backends.append(UnsupportedJobQueue(kind))
    return JobQueueManager(backends, crash_if_none=crash_if_none)


class JobQueueConsumer:
    """Consumes jobs while this server holds the job-queue consumer lock."""

    name = "job-queue-consumer"

    def __init__(
        self,
        manager: JobQueueManager,
        jobs: JobHost,
        lock_redis: aioredis.Redis,
        *,
        lock_ttl_seconds: float,
        load: WorkerLoad | None = None,
    ) -> None:
        self._manager = manager
        self._jobs = jobs
        self._load = load
        self._resumer: asyncio.Task[None] | None = None
        self.lock = DistributedLock(
            lock_redis,
            JOB_QUEUE_CONSUMER_LOCK_KEY,
            lock_ttl_seconds,
            on_lock=self._on_lock,
            on_unlock=self._on_unlock,
        )

    async def start(self) -> None:
        log.info("starting job queue consumer, trying to get the lock")
        await self.lock.start()

    async def _on_lock(self) -> None:
        log.info("job queue consumer lock acquired")
        await self._manager.start_consumers(self.handle)

    async def _on_unlock(self) -> None:
        log.info("stopping job queue consumer")
        await self._manager.stop_consumers()

    async def handle(self, job: EnqueuedJob) -> None:
        # back-pressure (services §1.6.1): workers full -> take no more jobs until they drain
        if self._load is not None and self._resumer is None and self._load.workers_full():
            self.pause()
            self._resumer = asyncio.create_task(self._resume_when_drained(), name="job-queue-resume")
        await self._jobs.run_job(job.plugin_config_id, job.type, job.payload)

    async def _resume_when_drained(self) -> None:
        assert self._load is not None
        try:
            await self._load.wait_drained()
            log.info("plugin workers drained; job queue consumer resumed")
        finally:
            self._resumer = None
            self.resume()

    @property
    def paused(self) -> bool:
        return self._resumer is not None

    def pause(self) -> None:
        self._manager.pause()

    def resume(self) -> None:
        self._manager.resume()

    async def stop(self) -> None:
        if self._resumer is not None:
            self._resumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resumer
        await self.lock.stop()
