"""The Celery consumer: takes batches of task messages off the Redis list PLUGINS_CELERY_QUEUE and
hands them to the ingestor (events) and the plugin job queue (jobs), losing none.

Delivery is at least once. A batch is moved atomically from the queue into this instance's
processing list, and removed from there only after the ingestor returned (its effects are
durable). Each instance keeps a heartbeat key with a TTL; the processing list of an instance whose
heartbeat has expired (it crashed or hung) is moved back to the head of the queue by any live
instance. So a crash can make at most one batch (INGESTION_BATCH_SIZE messages) per crashed
instance be ingested twice.

With a two-stage ingestor (`StagedIngestor`, the Postgres pipeline) the next batch is taken,
parsed and prepared while the current one commits, and the one after it is being moved into the
processing list; all are there, the oldest at its right end. A batch starts committing only
after the one before it was acknowledged (trimmed off the right end), so the duplicate bound
stays one batch.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import RedisError

from plugin_server.ingestion.api import Ingestor, StagedIngestor
from plugin_server.ingestion.dead_letter import DeadLetterQueue
from plugin_server.ingestion.pipeline import STAGE_INGESTION
from plugin_server.ingestion.types import IncomingEvent, Outcome
from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.queues.backpressure import BEHIND, Behind
from plugin_server.queues.celery_format import (
    PLUGIN_JOB_TASK,
    PROCESS_EVENT_TASK,
    CeleryMessageError,
    event_from_task,
    job_from_task,
    message_id,
    parse_celery_message,
)
from plugin_server.queues.failures import ingest_alone, is_infrastructure_error

log = get_logger(__name__)

PARSE_STAGE = "celery_parse"
PLUGIN_JOB_STAGE = "celery_plugin_job"
# How long one blocking wait on an empty queue lasts (at most) before it is simply issued again.
BLOCK_SECONDS = 5.0
# Retries while a store is down are at most this far apart: work resumes within it once it is back.
MAX_BACKOFF_SECONDS = 1.0

MALFORMED = Counter(
    "plugin_server_celery_malformed_messages",
    "Celery queue elements that could not be decoded, by reason (each is dead-lettered)",
    ["reason"],
    registry=REGISTRY,
)
EVENTS = Counter(
    "plugin_server_celery_events",
    "Events taken off the Celery queue, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
PLUGIN_JOBS = Counter(
    "plugin_server_celery_plugin_jobs", "plugin_job tasks handed to the job queue", registry=REGISTRY
)
BATCHES = Histogram(
    "plugin_server_celery_batch_seconds",
    "Time to process one batch of Celery messages, from taking it to acknowledging it",
    registry=REGISTRY,
)
ERRORS = Counter(
    "plugin_server_celery_errors",
    "Failures of the Celery consumer that made it back off and retry, by kind",
    ["kind"],
    registry=REGISTRY,
)
RECOVERED = Counter(
    "plugin_server_celery_recovered_messages",
    "Messages moved back to the queue from the processing list of an instance that stopped",
    registry=REGISTRY,
)
QUEUE_LENGTH = Gauge(
    "plugin_server_celery_queue_length", "Length of the Celery queue at the last heartbeat", registry=REGISTRY
)


class PluginJobQueue(Protocol):
    """Where a `plugin_job` task's job goes (the plugin job queue)."""

    async def enqueue(self, job: dict[str, Any]) -> None: ...


# Move up to ARGV[1] - LLEN(processing) messages from the queue's head (its right end) onto the
# processing list, then return the whole processing list: anything already there (a batch whose
# ingestion failed, a message moved by an interrupted blocking wait) is part of the batch.
_TAKE_BATCH = """
local want = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[2])
for _ = 1, want do
    if not redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') then break end
end
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

# Give a processing list back to the head of the queue, order kept, if its owner's heartbeat is
# gone (or ARGV[2] == '1': the owner itself giving back). Returns the number moved, -1 if alive.
_GIVE_BACK = """
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT') do moved = moved + 1 end
redis.call('SREM', KEYS[4], ARGV[1])
return moved
"""


# Move up to ARGV[1] messages from the queue's head onto the processing list (a batch is in flight
# there already) and return only those moved, oldest first.
_TAKE_MORE = """
local taken = {}
for i = 1, tonumber(ARGV[1]) do
    local message = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
    if not message then break end
    taken[i] = message
end
return taken
"""

# Acknowledge the oldest batch: drop the ARGV[1] messages at the processing list's right end, if
# they are the batch's (oldest ARGV[2], newest ARGV[3]). Returns 0, touching nothing, if not
# (another instance gave the list back meanwhile): the caller then removes the batch by value.
_ACK_OLDEST = """
local n = tonumber(ARGV[1])
if redis.call('LINDEX', KEYS[1], -1) == ARGV[2] and redis.call('LINDEX', KEYS[1], -n) == ARGV[3] then
    redis.call('LTRIM', KEYS[1], 0, -n - 1)
    return 1
end
return 0
"""

DOWNSTREAM_POLL_SECONDS = 0.05

# Messages parsed between two yields to the event loop (so a batch committing meanwhile goes on).
_PARSE_SLICE = 25


class CeleryKeys:
    """The Redis keys of one queue's consumers (all but the queue itself belong to this service)."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.consumers = f"plugin-server:celery:{queue}:consumers"

    def processing(self, instance_id: str) -> str:
        return f"plugin-server:celery:{self.queue}:processing:{instance_id}"

    def alive(self, instance_id: str) -> str:
        return f"plugin-server:celery:{self.queue}:alive:{instance_id}"


class _Backoff:
    """Exponential back-off with jitter, reset after a success."""

    def __init__(self, first: float = 0.1, maximum: float = MAX_BACKOFF_SECONDS) -> None:
        self._first = first
        self._maximum = maximum
        self._failures = 0

    def next_delay(self) -> float:
        self._failures += 1
        delay = min(self._maximum, self._first * 2 ** (self._failures - 1))
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._failures = 0


class CeleryConsumer:
    """Consumes PLUGINS_CELERY_QUEUE in batches; a supervised service (`start`, `run`, `stop`).

    `ingestor` is None in Kafka mode: then only `plugin_job` tasks are handled, and an event task
    is dead-lettered as having no handler (as the original, which had none registered).
    """

    name = "celery-consumer"

    def __init__(
        self,
        redis: aioredis.Redis,
        queue: str,
        *,
        instance_id: str,
        dead_letters: DeadLetterQueue,
        ingestor: Ingestor | None = None,
        jobs: PluginJobQueue | None = None,
        batch_size: int = 500,
        heartbeat_ttl: float = 30.0,
        on_events: Callable[[], None] | None = None,
        downstream: Behind | None = None,
    ) -> None:
        self._redis = redis
        self.keys = CeleryKeys(queue)
        self.instance_id = instance_id
        self._processing = self.keys.processing(instance_id)
        self._alive = self.keys.alive(instance_id)
        self._dead_letters = dead_letters
        self._ingestor = ingestor
        self._jobs = jobs
        self._batch_size = batch_size
        self._heartbeat_ttl = heartbeat_ttl
        self._on_events = on_events  # told each time events were handed on (staleness watchdog)
        self._downstream = downstream  # why taking the next batch should wait (back-pressure)
        # A blocking wait must end before the client's read timeout would call it a failure.
        socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        self._block_seconds = min(BLOCK_SECONDS, socket_timeout / 2) if socket_timeout else BLOCK_SECONDS
        self._take_batch = redis.register_script(_TAKE_BATCH)
        self._take_more = redis.register_script(_TAKE_MORE)
        self._ack_oldest = redis.register_script(_ACK_OLDEST)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._staged: StagedIngestor[Any] | None = ingestor if isinstance(ingestor, StagedIngestor) else None
        # Staged ingestor: the task committing and acknowledging the oldest batch in flight, and
        # the one moving the batch after the next into the processing list.
        self._committing: asyncio.Task[None] | None = None
        self._take_ahead_task: asyncio.Task[list[bytes]] | None = None
        self._stop_requested = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._loop_done = asyncio.Event()
        self._loop_done.set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        # set when a batch failed for a reason of its events: it is retried one event at a time
        self._one_by_one = False
        self.batches_done = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Announce this instance, then give back what crashed instances left in flight."""
        await self._beat()
        await self.recover_orphans()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="celery-heartbeat")
        log.info(
            "✅ Celery consumer started",
            queue=self.keys.queue,
            tasks=[PROCESS_EVENT_TASK, PLUGIN_JOB_TASK] if self._ingestor else [PLUGIN_JOB_TASK],
        )

    async def run(self) -> None:
        """Take, process and acknowledge batches until `stop()`."""
        self._loop_done.clear()
        backoff = _Backoff()
        try:
            while not self._stop_requested.is_set():
                try:
                    if not self._resumed.is_set():
                        await self._finish_commit()
                        await self._wait_for(self._resumed)
                        continue
                    if self._downstream is not None and (reason := self._downstream()):
                        await self._finish_commit()
                        await self._wait_downstream(reason)
                        continue
                    if self._one_by_one:
                        await self._step_one_by_one()
                    elif self._staged is not None:
                        await self._step_overlapped(self._staged)
                    else:
                        await self._step()
                    backoff.reset()
                    self._last_error = None
                except Exception as exc:
                    # The batch stays in the processing list and is taken again: after waiting when
                    # a store failed, one event at a time at once when the events did.
                    self._note_failure("redis" if isinstance(exc, RedisError) else "ingest", exc)
                    await self._settle_commit()
                    if isinstance(exc, RedisError) or is_infrastructure_error(exc):
                        await self._sleep(backoff.next_delay())
                    else:
                        log.warning("Celery batch failed; retrying its events one by one", error=repr(exc))
                        self._one_by_one = True
        finally:
            try:
                # Stop: the batch committing finishes and is acknowledged; those only taken (not
                # prepared) stay in the processing list and are given back.
                await self._settle_commit()
            finally:
                self._loop_done.set()

    async def _step_one_by_one(self) -> None:
        batch = await self._take()
        if batch:
            await self._process(batch, one_by_one=True)
        self._one_by_one = False

    async def _step(self) -> None:
        batch = await self._take()
        if not batch:
            await self._wait_for_messages()
        else:
            await self._process(batch)

    async def stop(self) -> None:
        """Stop taking batches, let the one in flight finish, and give back anything not done."""
        self._stop_requested.set()
        await self._loop_done.wait()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None
        try:
            moved = await self._give_back(
                keys=[self.keys.queue, self._processing, self._alive, self.keys.consumers],
                args=[self.instance_id, "1"],
            )
            await self._redis.delete(self._alive)
            if moved:
                log.info("gave unfinished Celery messages back to the queue", count=moved)
        except (RedisError, OSError) as exc:
            # The heartbeat expires on its own and another instance gives the messages back.
            log.warning("could not give back the processing list at stop", error=repr(exc))
        log.info("🛑 Celery consumer stopped", batches=self.batches_done)

    def pause(self) -> None:
        """Take no new batch after the current one (back-pressure from outside)."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def ready(self) -> tuple[bool, str]:
        if self._loop_done.is_set():
            return False, "not consuming"
        if self._last_error is not None:
            return False, self._last_error
        return True, ""

    # ------------------------------------------------------------------ taking and acknowledging
    async def _take(self) -> list[bytes]:
        items: list[bytes] = await self._take_batch(
            keys=[self.keys.queue, self._processing], args=[self._batch_size]
        )
        items.reverse()  # the processing list holds the oldest message at its right end
        return items

    async def _wait_for_messages(self) -> None:
        """Block until the queue has a message (moved into the processing list) or stop is asked."""
        # BLMOVE takes fractional seconds since Redis 6; the stubs say int.
        timeout = cast(int, self._block_seconds)
        waiter: asyncio.Future[Any] = asyncio.ensure_future(
            self._redis.blmove(self.keys.queue, self._processing, timeout, "RIGHT", "LEFT")
        )
        stopping = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait([waiter, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not waiter.done():
                # A message this wait may have moved stays in the processing list: `stop` gives it back.
                waiter.cancel()
            await asyncio.gather(waiter, stopping, return_exceptions=True)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]

    async def _acknowledge(self) -> None:
        await self._redis.delete(self._processing)

    async def _acknowledge_oldest(self, messages: Sequence[bytes]) -> None:
        """Remove the oldest batch in flight (these messages, oldest first) from the processing list."""
        if not messages:
            return
        if await self._ack_oldest(keys=[self._processing], args=[len(messages), messages[0], messages[-1]]):
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for raw in messages:
                pipe.lrem(self._processing, -1, cast(str, raw))
            await pipe.execute()

    async def _acknowledge_committed(self, messages: Sequence[bytes]) -> None:
        """Acknowledge a committed batch, waiting for Redis if it is down: taking the batch again
        would only find its messages committed, at the cost of running it through the plugins."""
        backoff = _Backoff()
        while True:
            try:
                await self._acknowledge_oldest(messages)
                return
            except (RedisError, OSError) as exc:
                self._note_failure("redis", exc)
                if self._stop_requested.is_set():
                    raise
                await self._sleep(backoff.next_delay())

    # ------------------------------------------------------------------ processing
    async def _process(self, batch: Sequence[bytes], *, one_by_one: bool = False) -> None:
        started = time.perf_counter()
        events, settled = await self._sort(batch)
        if settled and events:
            await self._remove(settled)
        if events:
            assert self._ingestor is not None
            if one_by_one:
                outcomes = [await self._ingest_alone(event) for event in events]
            else:
                outcomes = await self._ingestor.ingest(events)
            self._count(outcomes)
        await self._acknowledge()
        self.batches_done += 1
        BATCHES.observe(time.perf_counter() - started)

    async def _ingest_alone(self, event: IncomingEvent) -> Outcome:
        """Ingest one event; dead-letter it if it fails twice for a reason of its own."""
        assert self._ingestor is not None
        result = await ingest_alone(self._ingestor, event, self._sleep)
        if not isinstance(result, Exception):
            return result
        log.warning("event dead-lettered: it failed alone", error=repr(result), team_id=event.team_id)
        error = str(result) or repr(result)
        await self._dead_letters.record(
            event.raw, error, STAGE_INGESTION, event.team_id, message_id=event.message_id
        )
        return Outcome.DEAD_LETTERED

    async def _step_overlapped(self, ingestor: StagedIngestor[Any]) -> None:
        """Take and prepare the next batch while the one before commits; then commit it in turn."""
        ahead = self._committing is not None
        if ahead:
            batch = await self._taken_ahead()
        else:
            await self._drop_take_ahead()  # what it took is in the processing list, taken whole now
            batch = await self._take()
        if not batch:
            if ahead:
                await self._finish_commit()
            else:
                await self._wait_for_messages()
            return
        if self._stop_requested.is_set() and ahead:
            return  # taken but not begun: given back at stop
        if len(batch) >= self._batch_size:
            # More are likely waiting: Redis moves the next batch while this one is worked on.
            self._take_ahead_task = asyncio.create_task(self._take_ahead(), name="celery-take-ahead")
        started = time.perf_counter()
        events, settled = await self._sort(batch)
        if settled:
            await self._remove(settled)
        if not events:
            return
        prepared = await ingestor.prepare(events)
        await self._finish_commit()  # raises if the batch before failed: this one is then retried
        self._committing = asyncio.create_task(
            self._commit(ingestor, prepared, [e.raw for e in events], started), name="celery-commit"
        )

    async def _commit(
        self, ingestor: StagedIngestor[Any], prepared: Any, messages: list[Any], started: float
    ) -> None:
        outcomes = await ingestor.commit(prepared)
        self._count(outcomes)
        await self._acknowledge_committed(messages)
        self.batches_done += 1
        BATCHES.observe(time.perf_counter() - started)

    async def _finish_commit(self) -> None:
        """Wait for the batch committing (if any); re-raises its failure."""
        task, self._committing = self._committing, None
        if task is not None:
            await task

    async def _settle_commit(self) -> None:
        """After a failure or at stop: let the batch committing end, noting (not raising) a failure,
        so the next take starts again from the whole processing list."""
        try:
            await self._finish_commit()
        except Exception as exc:
            self._note_failure("redis" if isinstance(exc, RedisError) else "ingest", exc)
        await self._drop_take_ahead()

    async def _taken_ahead(self) -> list[bytes]:
        task, self._take_ahead_task = self._take_ahead_task, None
        return await task if task is not None else await self._take_ahead()

    async def _drop_take_ahead(self) -> None:
        """Wait for a take ahead and forget its result: its messages stay in the processing list."""
        task, self._take_ahead_task = self._take_ahead_task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _take_ahead(self) -> list[bytes]:
        items: list[bytes] = await self._take_more(
            keys=[self.keys.queue, self._processing], args=[self._batch_size]
        )
        return items

    async def _remove(self, settled: Sequence[bytes]) -> None:
        # Should ingestion fail and the batch be retried, these are not dead-lettered or enqueued twice.
        async with self._redis.pipeline(transaction=False) as pipe:
            for raw in settled:
                pipe.lrem(self._processing, 1, cast(str, raw))
            await pipe.execute()

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        if self._on_events is not None:
            self._on_events()
        for outcome, count in collections.Counter(outcomes).items():
            EVENTS.labels(outcome.value if isinstance(outcome, Outcome) else str(outcome)).inc(count)

    async def _sort(self, batch: Sequence[bytes]) -> tuple[list[IncomingEvent], list[bytes]]:
        """Events for the ingestor, and the messages settled here (jobs enqueued, bad ones dead-lettered)."""
        events: list[IncomingEvent] = []
        settled: list[bytes] = []  # done before the events: taken out of the batch at once
        for index, raw in enumerate(batch):
            if index % _PARSE_SLICE == _PARSE_SLICE - 1:
                await asyncio.sleep(0)
            try:
                task = parse_celery_message(raw)
                if task.name == PROCESS_EVENT_TASK and self._ingestor is not None:
                    events.append(event_from_task(task, raw))
                    continue
                if task.name != PLUGIN_JOB_TASK:
                    raise CeleryMessageError(
                        "unknown_task", f"Missing process handler for task {task.name}", task=task.name
                    )
                await self._enqueue_job(raw, job_from_task(task))
            except CeleryMessageError as exc:
                await self._reject(raw, exc)
            settled.append(raw)
        return events, settled

    async def _reject(self, raw: bytes, exc: CeleryMessageError) -> None:
        MALFORMED.labels(exc.reason).inc()
        log.warning(
            "malformed Celery message dead-lettered",
            reason=exc.reason,
            error=str(exc),
            task=exc.task,
            team_id=exc.team_id,
            size=len(raw),
        )
        await self._dead_letters.record(raw, str(exc), PARSE_STAGE, exc.team_id, message_id=message_id(raw))

    async def _enqueue_job(self, raw: bytes, job: dict[str, Any]) -> None:
        if self._jobs is None:
            error = "no plugin job queue is running"
        else:
            try:
                await self._jobs.enqueue(job)
                PLUGIN_JOBS.inc()
                return
            except Exception as exc:
                error = f"could not enqueue plugin job: {exc!r}"
        log.warning(
            "plugin job dead-lettered", error=error, team_id=job["pluginConfigTeam"], type=job["type"]
        )
        await self._dead_letters.record(
            raw, error, PLUGIN_JOB_STAGE, job["pluginConfigTeam"], job, message_id=message_id(raw)
        )

    # ------------------------------------------------------------------ heartbeat and recovery
    async def _beat(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._alive, str(time.time()), ex=max(1, round(self._heartbeat_ttl)), get=True)
            pipe.sadd(self.keys.consumers, self.instance_id)
            pipe.llen(self.keys.queue)
            previous, _added, length = await pipe.execute()
        QUEUE_LENGTH.set(length)
        if previous is None and self._heartbeat_task is not None:
            log.warning(
                "Celery heartbeat had lapsed: another instance may have re-queued the batch in flight",
                ttl_s=self._heartbeat_ttl,
            )

    async def recover_orphans(self) -> int:
        """Give back the processing lists of instances whose heartbeat is gone. Returns messages moved."""
        members = await self._redis.smembers(self.keys.consumers)
        total = 0
        for member in members:
            instance = member.decode() if isinstance(member, bytes) else str(member)
            if instance == self.instance_id:
                continue
            moved = await self._give_back(
                keys=[
                    self.keys.queue,
                    self.keys.processing(instance),
                    self.keys.alive(instance),
                    self.keys.consumers,
                ],
                args=[instance, "0"],
            )
            if moved > 0:
                RECOVERED.inc(moved)
                log.warning(
                    "re-queued the in-flight messages of a stopped instance", instance=instance, count=moved
                )
            total += max(moved, 0)
        return total

    async def _heartbeat_loop(self) -> None:
        interval = self._heartbeat_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._beat()
                await self.recover_orphans()
            except (RedisError, OSError) as exc:
                ERRORS.labels("heartbeat").inc()
                log.warning("Celery heartbeat failed", error=repr(exc))

    # ------------------------------------------------------------------ helpers
    async def _wait_downstream(self, reason: str) -> None:
        """Take no batch while the work batches hand on is behind (memory stays bounded and
        nothing is dropped); look again every 50 ms."""
        assert self._downstream is not None
        log.warning("Celery consumer waits: downstream work behind", reason=reason)
        BEHIND.labels(self.name).set(1)
        started = time.monotonic()
        try:
            while not self._stop_requested.is_set() and self._downstream():
                await self._sleep(DOWNSTREAM_POLL_SECONDS)
        finally:
            BEHIND.labels(self.name).set(0)
        log.info(
            "Celery consumer resumes: downstream caught up", waited_s=round(time.monotonic() - started, 2)
        )

    def _note_failure(self, kind: str, exc: BaseException) -> None:
        ERRORS.labels(kind).inc()
        error = f"{kind}: {exc!r}"
        # While a store is down the same failure repeats every second: its traceback once is enough.
        repeated = error == self._last_error
        self._last_error = error
        log.error(
            "Celery consumer failed; backing off",
            kind=kind,
            error=repr(exc),
            exc_info=None if repeated else exc,
        )

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when stop is asked."""
        try:
            await asyncio.wait_for(self._stop_requested.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _wait_for(self, event: asyncio.Event) -> None:
        stopping = asyncio.create_task(self._stop_requested.wait())
        resumed = asyncio.create_task(event.wait())
        await asyncio.wait([stopping, resumed], return_when=asyncio.FIRST_COMPLETED)
        for task in (stopping, resumed):
            task.cancel()
        await asyncio.gather(stopping, resumed, return_exceptions=True)
