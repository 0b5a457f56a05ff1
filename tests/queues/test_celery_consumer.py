"""The Celery consumer against real Redis and Postgres: batching, bad input, failures, recovery, stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.ingestion.dead_letter import PostgresDeadLetterQueue
from plugin_server.ingestion.types import IncomingEvent, Outcome
from plugin_server.metrics import REGISTRY
from plugin_server.queues.celery import CeleryConsumer, CeleryKeys
from plugin_server.queues.celery_format import PLUGIN_JOB_TASK, encode_celery_event, encode_task_message
from tests.conftest import REDIS_URL

QUEUE = "posthog-plugins"
KEYS = CeleryKeys(QUEUE)


class RecordingIngestor:
    """Keeps what it is given; can be held at a gate or made to fail, like a real store would."""

    def __init__(self) -> None:
        self.batches: list[list[IncomingEvent]] = []
        self.failures_left = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("database unavailable")
        self.batches.append(list(batch))
        return [Outcome.INGESTED] * len(batch)

    @property
    def seqs(self) -> list[int]:
        return [e.event["properties"]["seq"] for batch in self.batches for e in batch]


class RecordingJobQueue:
    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    async def enqueue(self, job: dict[str, Any]) -> None:
        self.jobs.append(job)


def event_message(seq: int, team_id: int = 2) -> str:
    return encode_celery_event(
        f"user-{seq % 7}",
        "127.0.0.1",
        "http://localhost",
        {"event": "$pageview", "properties": {"seq": seq}},
        team_id,
        "2021-10-28T12:00:01.123456+00:00",
        "2021-10-28T12:00:00.500000Z",
        queue=QUEUE,
    )


async def push(redis: aioredis.Redis, messages: Sequence[str | bytes]) -> None:
    # LPUSH one at a time in order, as Django does: the first pushed is the first taken.
    async with redis.pipeline(transaction=False) as pipe:
        for message in messages:
            pipe.lpush(QUEUE, message)
        await pipe.execute()


async def wait_until(condition: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def queue_is_empty(redis: aioredis.Redis) -> bool:
    return await redis.llen(QUEUE) == 0


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def make_consumer(redis: aioredis.Redis, pg: asyncpg.Pool) -> Callable[..., CeleryConsumer]:
    counter = iter(range(1000))

    def make(**kwargs: Any) -> CeleryConsumer:
        kwargs.setdefault("instance_id", f"test-instance-{next(counter)}")
        kwargs.setdefault("dead_letters", PostgresDeadLetterQueue(pg))
        kwargs.setdefault("batch_size", 500)
        kwargs.setdefault("heartbeat_ttl", 30.0)
        return CeleryConsumer(kwargs.pop("client", redis), QUEUE, **kwargs)

    return make


@contextlib.asynccontextmanager
async def consuming(consumer: CeleryConsumer) -> AsyncIterator[asyncio.Task[None]]:
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        async with asyncio.timeout(10):
            await consumer.stop()
            await task


async def test_batches_are_full_sized_and_in_queue_order(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [event_message(i) for i in range(1200)])
    ingestor = RecordingIngestor()
    consumer = make_consumer(ingestor=ingestor, batch_size=500)
    async with consuming(consumer):
        await wait_until(lambda: len(ingestor.seqs) == 1200)
    assert [len(b) for b in ingestor.batches] == [500, 500, 200]
    assert ingestor.seqs == list(range(1200))
    assert all(e.team_id == 2 and e.source == "celery" for b in ingestor.batches for e in b)
    assert await redis.llen(QUEUE) == 0
    assert await redis.exists(KEYS.processing(consumer.instance_id)) == 0
    assert await redis.exists(KEYS.alive(consumer.instance_id)) == 0  # removed at a clean stop


async def test_5_2_01_recommendation_malformed_messages_are_dead_lettered_and_the_rest_flows(
    redis: aioredis.Redis, pg: asyncpg.Pool, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    bad = {
        b"{not json": "not_json",
        b'{"content-type": "text/plain", "properties": {}}': "unsupported_content_type",
        encode_task_message("posthog.tasks.unknown", [1, 2], {}, queue=QUEUE).encode(): "unknown_task",
        encode_task_message(
            "posthog.tasks.process_event.process_event_with_plugins",
            ["u", None, "s", "x", 5, "n", None],
            {},
            queue=QUEUE,
        ).encode(): "bad_arguments",
    }
    before = {
        reason: metric("plugin_server_celery_malformed_messages_total", reason=reason)
        for reason in bad.values()
    }
    dead_before = metric("plugin_server_dead_letter_total", stage="celery_parse")
    messages: list[str | bytes] = []
    for i, raw in enumerate(bad):
        messages += [event_message(2 * i), raw, event_message(2 * i + 1)]
    await push(redis, messages)
    ingestor = RecordingIngestor()
    async with consuming(make_consumer(ingestor=ingestor)):
        await wait_until(lambda: len(ingestor.seqs) == 8)
        await wait_until(lambda: queue_is_empty(redis))
    assert ingestor.seqs == list(range(8))
    rows = await pg.fetch("SELECT stage, error, team_id, raw FROM plugin_server_dead_letter ORDER BY id")
    assert [bytes(r["raw"]) for r in rows] == list(bad)
    assert all(r["stage"] == "celery_parse" and r["error"] for r in rows)
    assert rows[2]["error"] == "Missing process handler for task posthog.tasks.unknown"
    assert rows[3]["team_id"] == 5
    for reason in bad.values():
        assert metric("plugin_server_celery_malformed_messages_total", reason=reason) == before[reason] + 1
    assert metric("plugin_server_dead_letter_total", stage="celery_parse") == dead_before + 4


async def test_failed_ingestion_keeps_the_batch_and_retries_it(
    redis: aioredis.Redis, pg: asyncpg.Pool, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [event_message(0), b"garbage", event_message(1), event_message(2)])
    ingestor = RecordingIngestor()
    ingestor.failures_left = 2
    consumer = make_consumer(ingestor=ingestor)
    async with consuming(consumer):
        await wait_until(lambda: len(ingestor.seqs) == 3)
        assert not ingestor.failures_left
    assert ingestor.seqs == [0, 1, 2]
    # the bad message was dead-lettered once, not once per attempt
    assert await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter") == 1
    assert await redis.llen(QUEUE) == 0


class PoisonedIngestor(RecordingIngestor):
    """Fails any batch holding the event with seq 1, for a reason of that event (not a store)."""

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]:
        if any(e.event["properties"]["seq"] == 1 for e in batch):
            raise ValueError("this event breaks the pipeline")
        return await super().ingest(batch)


async def test_a_batch_failing_for_an_event_is_retried_one_by_one_and_that_event_dead_lettered(
    redis: aioredis.Redis, pg: asyncpg.Pool, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [event_message(i) for i in range(4)])
    ingestor = PoisonedIngestor()
    consumer = make_consumer(ingestor=ingestor, batch_size=10)
    async with consuming(consumer):
        await wait_until(lambda: len(ingestor.seqs) == 3)
        await push(redis, [event_message(i) for i in range(4, 7)])
        await wait_until(lambda: len(ingestor.seqs) == 6)
    assert ingestor.seqs == [0, 2, 3, 4, 5, 6]
    # one event at a time after the failure, whole batches again after that
    assert [len(b) for b in ingestor.batches] == [1, 1, 1, 3]
    [dead] = await pg.fetch("SELECT error, stage, raw FROM plugin_server_dead_letter")
    assert dead["error"] == "this event breaks the pipeline"
    assert dead["stage"] == "plugin_server_ingest_event"
    assert json_seq(bytes(dead["raw"])) == 1
    assert await redis.llen(QUEUE) == 0 and await redis.exists(KEYS.processing(consumer.instance_id)) == 0


async def test_orphaned_processing_list_goes_back_to_the_queue_head_on_start(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    # A crashed instance left messages 0-2 in its processing list (oldest at the right end, as
    # taken) and no heartbeat; a live instance has 3-4 in flight. The queue holds 5-9.
    await redis.lpush(KEYS.processing("crashed"), *[event_message(i) for i in range(3)])
    await redis.lpush(KEYS.processing("alive"), *[event_message(i) for i in (3, 4)])
    await redis.set(KEYS.alive("alive"), "1", ex=60)
    await redis.sadd(KEYS.consumers, "crashed", "alive")
    await push(redis, [event_message(i) for i in range(5, 10)])
    before = metric("plugin_server_celery_recovered_messages_total")
    ingestor = RecordingIngestor()
    async with consuming(make_consumer(ingestor=ingestor)):
        await wait_until(lambda: len(ingestor.seqs) == 8)
    assert ingestor.seqs == [0, 1, 2, 5, 6, 7, 8, 9]
    assert await redis.exists(KEYS.processing("crashed")) == 0
    assert await redis.llen(KEYS.processing("alive")) == 2  # an instance with a heartbeat is left alone
    assert await redis.sismember(KEYS.consumers, "crashed") == 0
    assert metric("plugin_server_celery_recovered_messages_total") == before + 3


async def test_a_running_instance_recovers_a_batch_once_its_owner_heartbeat_expires(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await redis.lpush(KEYS.processing("hung"), event_message(1))
    await redis.set(KEYS.alive("hung"), "1", px=1500)
    await redis.sadd(KEYS.consumers, "hung")
    ingestor = RecordingIngestor()
    async with consuming(make_consumer(ingestor=ingestor, heartbeat_ttl=1.0)):
        await asyncio.sleep(0.5)
        assert ingestor.seqs == []  # still owned
        await wait_until(lambda: ingestor.seqs == [1], within=5)


async def test_10_6_fix_graceful_stop_stops_receiving_then_finishes_the_batch_in_flight(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [event_message(i) for i in range(10)])
    ingestor = RecordingIngestor()
    ingestor.gate = asyncio.Event()
    consumer = make_consumer(ingestor=ingestor, batch_size=4)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(ingestor.entered.wait(), 5)
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waits for the batch in flight
    ingestor.gate.set()
    await asyncio.wait_for(stopping, 5)
    await asyncio.wait_for(task, 5)
    assert ingestor.seqs == [0, 1, 2, 3]
    assert await redis.exists(KEYS.processing(consumer.instance_id)) == 0
    assert await redis.llen(QUEUE) == 6  # the rest waits in the queue, in order, for the next instance
    follower = RecordingIngestor()
    async with consuming(make_consumer(ingestor=follower)):
        await wait_until(lambda: follower.seqs == list(range(4, 10)))


async def test_stop_with_a_failing_batch_gives_it_back(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [event_message(i) for i in range(3)])
    ingestor = RecordingIngestor()
    ingestor.failures_left = 1000
    consumer = make_consumer(ingestor=ingestor)
    async with consuming(consumer):
        await asyncio.wait_for(ingestor.entered.wait(), 5)
    assert await redis.exists(KEYS.processing(consumer.instance_id)) == 0
    assert await redis.llen(QUEUE) == 3
    follower = RecordingIngestor()
    async with consuming(make_consumer(ingestor=follower)):
        await wait_until(lambda: follower.seqs == [0, 1, 2])


async def test_empty_queue_blocks_instead_of_polling_and_wakes_on_a_push(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    ingestor = RecordingIngestor()
    consumer = make_consumer(ingestor=ingestor)
    async with consuming(consumer):
        await asyncio.sleep(1.0)
        # one blocking wait is held on the server: a client blocked in BLMOVE
        clients = await redis.client_list()
        assert any(c.get("cmd") == "blmove" for c in clients)
        await push(redis, [event_message(42)])
        await wait_until(lambda: ingestor.seqs == [42], within=2)
    async with asyncio.timeout(2):  # stop does not wait for the blocking wait to time out
        stopper = make_consumer(ingestor=ingestor)
        async with consuming(stopper):
            await asyncio.sleep(0.2)


async def test_10_6_fix_redis_errors_back_off_and_consumption_continues(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    ingestor = RecordingIngestor()
    client = aioredis.Redis.from_url(REDIS_URL, client_name="celery-under-test")
    before = metric("plugin_server_celery_errors_total", kind="redis")
    consumer = make_consumer(ingestor=ingestor, client=client)
    try:
        async with consuming(consumer) as task:
            await asyncio.sleep(0.3)
            for c in await redis.client_list():
                if c.get("name") == "celery-under-test":
                    await redis.execute_command("CLIENT", "KILL", "ID", c["id"])
            await wait_until(lambda: metric("plugin_server_celery_errors_total", kind="redis") > before)
            await push(redis, [event_message(7)])
            await wait_until(lambda: ingestor.seqs == [7])
            assert not task.done()
            # ready again once that batch is acknowledged (one more Redis round trip)
            await wait_until(lambda: consumer.ready() == (True, ""), within=5)
    finally:
        await client.aclose()


async def test_10_6_fix_redis_down_is_reported_not_ready_and_the_loop_survives(
    pg: asyncpg.Pool, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    consumer = make_consumer(ingestor=RecordingIngestor(), client=client)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: consumer.ready()[0] is False and "redis" in consumer.ready()[1])
        await asyncio.sleep(0.3)
        assert not task.done()
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 5)
        await client.aclose()


async def test_4_7_115_pause_and_resume(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [event_message(i) for i in range(6)])
    ingestor = RecordingIngestor()
    consumer = make_consumer(ingestor=ingestor, batch_size=2)
    ingestor.gate = asyncio.Event()
    async with consuming(consumer):
        await asyncio.wait_for(ingestor.entered.wait(), 5)
        consumer.pause()
        ingestor.gate.set()
        await wait_until(lambda: len(ingestor.seqs) == 2)
        length = await redis.llen(QUEUE)
        assert length == 4
        await asyncio.sleep(0.2)
        assert await redis.llen(QUEUE) == length and len(ingestor.seqs) == 2
        consumer.resume()
        await wait_until(lambda: len(ingestor.seqs) == 6)
    assert await redis.llen(QUEUE) == 0


async def test_4_7_116_plugin_job_tasks_are_enqueued(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    args = [2, 39, "someJobName", "start", {"a": 1}]
    await push(redis, [encode_task_message(PLUGIN_JOB_TASK, args, {}, queue=QUEUE) for _ in range(6)])
    jobs = RecordingJobQueue()
    started = time.time() * 1000
    async with consuming(make_consumer(ingestor=RecordingIngestor(), jobs=jobs)):
        await wait_until(lambda: len(jobs.jobs) == 6)
    for job in jobs.jobs:
        assert started - 1 <= job.pop("timestamp") <= time.time() * 1000
        assert job == {
            "type": "someJobName",
            "payload": {"a": 1, "$operation": "start"},
            "pluginConfigId": 39,
            "pluginConfigTeam": 2,
        }


async def test_without_an_ingestor_events_are_dead_lettered_and_jobs_still_run(
    redis: aioredis.Redis, pg: asyncpg.Pool, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    # Kafka mode: the Celery list carries plugin jobs only.
    await push(
        redis,
        [event_message(1), encode_task_message(PLUGIN_JOB_TASK, [2, 39, "j", "start", {}], queue=QUEUE)],
    )
    jobs = RecordingJobQueue()
    async with consuming(make_consumer(ingestor=None, jobs=jobs)):
        await wait_until(lambda: len(jobs.jobs) == 1)
        await wait_until(lambda: pg.fetchval("SELECT count(*) = 1 FROM plugin_server_dead_letter"))
    row = await pg.fetchrow("SELECT stage, error FROM plugin_server_dead_letter")
    assert row["stage"] == "celery_parse"
    assert (
        row["error"]
        == "Missing process handler for task posthog.tasks.process_event.process_event_with_plugins"
    )


async def test_plugin_job_without_a_job_queue_is_dead_lettered(
    redis: aioredis.Redis, pg: asyncpg.Pool, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [encode_task_message(PLUGIN_JOB_TASK, [2, 39, "j", "start", {"x": 1}], queue=QUEUE)])
    async with consuming(make_consumer(ingestor=RecordingIngestor(), jobs=None)):
        await wait_until(lambda: pg.fetchval("SELECT count(*) = 1 FROM plugin_server_dead_letter"))
    row = await pg.fetchrow("SELECT stage, team_id, event FROM plugin_server_dead_letter")
    assert row["stage"] == "celery_plugin_job" and row["team_id"] == 2
    assert row["event"]["payload"] == {"x": 1, "$operation": "start"}


class StagedRecordingIngestor:
    """A two-stage ingestor (as the Postgres pipeline): records what each stage saw, including the
    processing list at the start of each commit; commits can be held at a gate or made to fail."""

    def __init__(self, redis: aioredis.Redis, processing: str) -> None:
        self._redis = redis
        self._processing = processing
        self.prepared: list[list[int]] = []
        self.committed: list[list[int]] = []
        self.in_flight_at_commit: list[list[int]] = []
        self.failures_left = 0
        self.gate: asyncio.Event | None = None
        self.committing = asyncio.Event()

    async def prepare(self, batch: Sequence[IncomingEvent]) -> list[IncomingEvent]:
        self.prepared.append([e.event["properties"]["seq"] for e in batch])
        return list(batch)

    async def commit(self, batch: list[IncomingEvent]) -> list[Outcome]:
        raws = await self._redis.lrange(self._processing, 0, -1)
        # what is not acknowledged yet
        self.in_flight_at_commit.append(sorted(json_seq(raw) for raw in raws if raw != b"garbage"))
        self.committing.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("database unavailable")
        self.committed.append([e.event["properties"]["seq"] for e in batch])
        return [Outcome.INGESTED] * len(batch)

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]:
        return await self.commit(await self.prepare(batch))

    @property
    def seqs(self) -> list[int]:
        return [seq for batch in self.committed for seq in batch]


def json_seq(raw: bytes) -> int:
    from plugin_server.queues.celery_format import event_from_task, parse_celery_message

    seq: int = event_from_task(parse_celery_message(raw), raw).event["properties"]["seq"]
    return seq


def staged(redis: aioredis.Redis, instance_id: str) -> StagedRecordingIngestor:
    return StagedRecordingIngestor(redis, KEYS.processing(instance_id))


async def test_staged_ingestor_next_batch_is_prepared_while_the_current_one_commits(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [event_message(i) for i in range(10)])
    ingestor = staged(redis, "overlap")
    ingestor.gate = asyncio.Event()
    consumer = make_consumer(ingestor=ingestor, batch_size=3, instance_id="overlap")
    async with consuming(consumer):
        await asyncio.wait_for(ingestor.committing.wait(), 5)
        await wait_until(lambda: len(ingestor.prepared) == 2)
        await asyncio.sleep(0.1)
        # batch 2 is taken and prepared and batch 3 taken, all in the processing list; no more
        assert ingestor.prepared == [[0, 1, 2], [3, 4, 5]] and ingestor.committed == []
        assert await redis.llen(KEYS.processing("overlap")) == 9
        assert await redis.llen(QUEUE) == 1
        ingestor.gate.set()
        await wait_until(lambda: len(ingestor.seqs) == 10)
    assert ingestor.committed == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    # each commit began once the batches before it were acknowledged: the oldest message still
    # in the processing list then was the batch's own first one
    for batch, in_flight in zip(ingestor.committed, ingestor.in_flight_at_commit, strict=True):
        assert set(batch) <= set(in_flight) and min(in_flight) == batch[0]
    assert await redis.exists(KEYS.processing("overlap")) == 0
    assert await redis.llen(QUEUE) == 0


async def test_staged_ingestor_a_failed_commit_is_retried_with_the_batch_prepared_after_it(
    redis: aioredis.Redis, pg: asyncpg.Pool, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [event_message(0), event_message(1), b"garbage", event_message(2), event_message(3)])
    ingestor = staged(redis, "retry")
    ingestor.failures_left = 1
    ingestor.gate = asyncio.Event()
    consumer = make_consumer(ingestor=ingestor, batch_size=2, instance_id="retry")
    async with consuming(consumer):
        await wait_until(lambda: len(ingestor.prepared) == 2)
        ingestor.gate.set()  # the first commit fails; the batch prepared meanwhile is not committed
        await wait_until(lambda: len(ingestor.seqs) == 4)
    # nothing committed twice, nothing out of order; the retry took everything in flight at once
    assert ingestor.committed == [[0, 1, 2, 3]]
    assert await pg.fetchval("SELECT count(*) FROM plugin_server_dead_letter") == 1
    assert await redis.exists(KEYS.processing("retry")) == 0
    assert await redis.llen(QUEUE) == 0


async def test_staged_ingestor_stop_commits_the_prepared_batch_and_gives_back_the_rest(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    await push(redis, [event_message(i) for i in range(10)])
    ingestor = staged(redis, "stopping")
    ingestor.gate = asyncio.Event()
    consumer = make_consumer(ingestor=ingestor, batch_size=3, instance_id="stopping")
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    await wait_until(lambda: len(ingestor.prepared) == 2)
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waits for the batches in flight
    ingestor.gate.set()
    await asyncio.wait_for(stopping, 5)
    await asyncio.wait_for(task, 5)
    assert ingestor.committed == [[0, 1, 2], [3, 4, 5]]
    assert await redis.exists(KEYS.processing("stopping")) == 0
    follower = RecordingIngestor()
    async with consuming(make_consumer(ingestor=follower)):
        await wait_until(lambda: follower.seqs == [6, 7, 8, 9])


async def test_staged_ingestor_acknowledges_by_value_when_its_list_was_given_back(
    redis: aioredis.Redis, make_consumer: Callable[..., CeleryConsumer]
) -> None:
    # The instance stalled past its heartbeat: another gave its processing list back to the queue
    # while a batch was committing. Acknowledging must then not trim messages of another batch.
    await push(redis, [event_message(i) for i in range(4)])
    ingestor = staged(redis, "stalled")
    ingestor.gate = asyncio.Event()
    consumer = make_consumer(ingestor=ingestor, batch_size=2, instance_id="stalled")
    async with consuming(consumer):
        await wait_until(lambda: len(ingestor.prepared) == 2)
        # [3, 2] and [1, 0] in flight: the oldest batch's messages go back to the queue
        moved = [await redis.rpoplpush(KEYS.processing("stalled"), QUEUE) for _ in range(2)]
        assert [json_seq(m) for m in moved] == [0, 1]
        await redis.lpush(KEYS.processing("stalled"), event_message(99))  # something newer
        ingestor.gate.set()
        await wait_until(lambda: 3 in ingestor.seqs)
        consumer.pause()
    left = sorted(json_seq(m) for m in await redis.lrange(KEYS.processing("stalled"), 0, -1))
    queued = sorted(json_seq(m) for m in await redis.lrange(QUEUE, 0, -1))
    # the newer message was not trimmed away with a batch: it was ingested, or given back at stop
    assert left == []
    assert {0, 1, 2, 3, 99} <= set(ingestor.seqs) | set(queued)
