"""The real server while its stores and itself fail mid-stream: Postgres restarted (cleanly, and
stopped as by a crash), Redis restarted on its AOF (cleanly, and SIGKILLed), the server SIGKILLed
mid-batch. Every event is stored exactly once, readiness says what is down, and work resumes
once the store is back."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.faults.rig import KEYS, Rig, rig, wait_for

EVENTS_PER_WAVE = 1000


async def _not_ready_because(the_rig: Rig, check: str) -> None:
    async def failing() -> bool:
        status, body = await asyncio.to_thread(the_rig.readiness)
        return status == 503 and check in body.get("failing", {})

    await wait_for(failing, 30, f"readiness reports {check}")


async def _push(the_rig: Rig, redis: aioredis.Redis, count: int) -> None:
    deadline = time.monotonic() + 30
    while True:  # the client reconnects once the restarted Redis answers
        try:
            await the_rig.push(redis, count)
            return
        except RedisError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_postgres_restarted_mid_stream_stores_every_event_once() -> None:
    async with rig() as (the_rig, pg, redis):
        the_rig.start_server()
        await the_rig.wait_ready()
        resumed_after = []
        for mode in ("fast", "immediate", "fast"):
            before = max(await the_rig.stored(pg), 0)
            await _push(the_rig, redis, EVENTS_PER_WAVE)
            await the_rig.wait_progress(pg, before)  # mid-stream: the wave is being ingested
            the_rig.postgres.stop(mode)
            await _not_ready_because(the_rig, "postgres")
            await asyncio.sleep(0.5)  # down a while: the consumer waits without spinning
            the_rig.postgres.start()
            await pg.expire_connections()
            stored = await the_rig.stored(pg)
            if stored < the_rig.pushed:
                resumed_after.append(await the_rig.wait_progress(pg, stored))
        await the_rig.assert_exactly_once(pg, redis)
        await the_rig.wait_ready()
        assert the_rig.stop_server() == 0
        print(f"ingestion resumed {', '.join(f'{s:.2f}' for s in resumed_after)} s after Postgres was back")
        # Retries are at most 1 s apart (0.1-0.5 s measured); the bound is loose for a busy machine
        # but fails the 19-37 s stalls of a pool handing out its dead connections one by one.
        assert max(resumed_after, default=0) < 10


async def test_redis_restarted_on_its_aof_mid_stream_stores_every_event_once() -> None:
    async with rig() as (the_rig, pg, redis):
        the_rig.start_server()
        await the_rig.wait_ready()
        for how in ("shutdown", "kill", "shutdown"):
            before = max(await the_rig.stored(pg), 0)
            await _push(the_rig, redis, EVENTS_PER_WAVE)
            await the_rig.wait_progress(pg, before)
            the_rig.redis_server.stop(how)
            await _not_ready_because(the_rig, "redis")
            await asyncio.sleep(0.5)
            the_rig.redis_server.start()
        await the_rig.assert_exactly_once(pg, redis)
        await the_rig.wait_ready()
        assert the_rig.stop_server() == 0


async def test_server_sigkilled_mid_batch_stores_every_event_once() -> None:
    async with rig(batch_size=500) as (the_rig, pg, redis):
        await _push(the_rig, redis, 4000)
        for _ in range(3):
            the_rig.start_server()

            async def mid_batch() -> bool:
                in_flight = [k async for k in redis.scan_iter(KEYS.processing("*"))]
                return bool(in_flight) and await the_rig.stored(pg) > 0

            await wait_for(mid_batch, 60, "a batch in flight")
            the_rig.kill_server()
            if await the_rig.stored(pg) >= the_rig.pushed:
                break
        the_rig.start_server()
        await the_rig.assert_exactly_once(pg, redis)
        assert the_rig.stop_server() == 0
