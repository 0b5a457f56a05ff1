"""The exportEvents upgrade on the host (plugins §3.8, §6.2) and reload without loss."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.services.export_events import (
    EXPORT_JOB,
    ExportEventsBuffers,
    ExportSettings,
    event_weight,
    parse_js_int,
)
from plugin_server.services.plugin_host import PluginCallError
from plugin_server.services.reload import ReloadListener
from tests.conftest import REDIS_URL

CONFIG = 39


class Exporter:
    """The plugin side: exportEvents, optionally raising RetryError a number of times."""

    def __init__(self, retry_times: int = 0, fail: bool = False, delay: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.retry_times = retry_times
        self.fail = fail
        self.delay = delay
        self.errors: list[PluginCallError] = []

    async def export_events(self, plugin_config_id: int, events: Sequence[dict[str, Any]]) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise PluginCallError("Error", "broken")
        if self.retry_times > 0:
            self.retry_times -= 1
            raise PluginCallError("RetryError", "try later", retry=True)
        self.batches.append(list(events))

    async def record_error(self, plugin_config_id: int, error: PluginCallError) -> None:
        self.errors.append(error)


class Recorder:
    def __init__(self) -> None:
        self.jobs: list[tuple[int, str, dict[str, Any], int]] = []
        self.metrics: dict[str, float] = {}

    async def enqueue(self, config_id: int, name: str, payload: dict[str, Any], run_at: int) -> None:
        self.jobs.append((config_id, name, payload, run_at))

    def metric(self, config_id: int, name: str, value: float) -> None:
        self.metrics[name] = self.metrics.get(name, 0) + value


def buffers(exporter: Exporter, recorder: Recorder, config: Mapping[str, Any]) -> ExportEventsBuffers:
    made = ExportEventsBuffers(exporter, recorder.enqueue, recorder.metric, test_mode=True)
    made.configure(CONFIG, config)
    return made


def event(name: str = "exported", **extra: Any) -> dict[str, Any]:
    return {"event": name, "distinct_id": "my_id", "properties": {}, **extra}


async def test_6_2_39_ignored_events_and_timer_flush() -> None:
    exporter, recorder = Exporter(), Recorder()
    made = buffers(
        exporter,
        recorder,
        {
            "exportEventsBufferBytes": "10000",
            "exportEventsBufferSeconds": "1",
            "exportEventsToIgnore": "default event,otherEvent",
        },
    )
    for name in ("default event", "otherEvent", "otherEvent2", "otherEvent3"):
        made.add(CONFIG, event(name))
    await asyncio.sleep(0.5)
    assert exporter.batches == []
    await asyncio.sleep(0.8)
    assert [[e["event"] for e in b] for b in exporter.batches] == [["otherEvent2", "otherEvent3"]]
    assert recorder.metrics == {"events_seen": 2, "events_delivered_successfully": 2}


async def test_6_2_40_retry_error_enqueues_retries_until_success() -> None:
    exporter, recorder = Exporter(retry_times=2), Recorder()
    made = buffers(exporter, recorder, {})
    for _ in range(3):
        made.add(CONFIG, event())
    await made.flush(CONFIG)
    assert len(recorder.jobs) == 1
    config_id, name, payload, _run_at = recorder.jobs[0]
    assert (config_id, name) == (CONFIG, EXPORT_JOB)
    assert payload["retriesPerformedSoFar"] == 1 and len(payload["batch"]) == 3
    await made.export_with_retry(CONFIG, payload)  # the job runs
    second = recorder.jobs[1][2]
    assert second["retriesPerformedSoFar"] == 2 and second["batchId"] == payload["batchId"]
    await made.export_with_retry(CONFIG, second)
    assert len(exporter.batches) == 1 and len(exporter.batches[0]) == 3
    assert recorder.metrics["retry_errors"] == 6
    assert recorder.metrics["events_seen"] == 3  # counted once, on the first attempt


async def test_6_2_41_at_most_15_retries() -> None:
    exporter, recorder = Exporter(retry_times=10**6), Recorder()
    made = buffers(exporter, recorder, {})
    made.add(CONFIG, event())
    await made.flush(CONFIG)
    for i in range(1, 20):
        assert len(recorder.jobs) == min(i, 15)
        await made.export_with_retry(CONFIG, recorder.jobs[-1][2])
    # runs 15..19 all re-ran the 15th retry's payload: each dropped its event
    assert recorder.metrics["undelivered_events"] == 5
    delays = [run_at for *_x, run_at in recorder.jobs]
    assert delays == sorted(delays)  # 6 s, 12 s, 24 s, ...


async def test_other_errors_are_recorded_not_retried() -> None:
    exporter, recorder = Exporter(fail=True), Recorder()
    made = buffers(exporter, recorder, {})
    made.add(CONFIG, event())
    await made.flush(CONFIG)
    assert recorder.jobs == []
    assert [e.message for e in exporter.errors] == ["broken"]
    assert recorder.metrics["other_errors"] == 1 and recorder.metrics["undelivered_events"] == 1


async def test_6_2_43_size_limit_batches() -> None:
    exporter, recorder = Exporter(), Recorder()
    made = buffers(exporter, recorder, {"exportEventsBufferBytes": "1000"})
    sample = event(padding="p" * 80)
    weight = event_weight(sample)
    per_batch = 1000 // weight
    for _ in range(100):
        made.add(CONFIG, dict(sample))
    await made.flush(CONFIG)
    sizes = [len(b) for b in exporter.batches]
    assert sum(sizes) == 100
    assert all(size == per_batch for size in sizes[:-1])
    assert 0 < sizes[-1] <= per_batch


async def test_6_2_44_one_byte_limit_exports_each_event_alone() -> None:
    exporter, recorder = Exporter(), Recorder()
    made = buffers(exporter, recorder, {"exportEventsBufferBytes": "1"})
    for _ in range(10):
        made.add(CONFIG, event())
    await made.flush(CONFIG)
    assert [len(b) for b in exporter.batches] == [1] * 10


async def test_6_2_45_teardown_flushes_at_once() -> None:
    exporter, recorder = Exporter(), Recorder()
    made = buffers(exporter, recorder, {"exportEventsBufferSeconds": "1000"})
    made.add(CONFIG, event())
    await asyncio.sleep(0.1)
    assert exporter.batches == []
    await made.remove(CONFIG)  # what teardown does
    assert len(exporter.batches) == 1
    assert not made.has(CONFIG)


def test_config_parsing_follows_parse_int() -> None:
    assert parse_js_int("2MB") == 2
    assert parse_js_int(" 0x10") == 16
    assert parse_js_int("nope") is None
    settings = ExportSettings.from_config(
        {"exportEventsBufferBytes": "0", "exportEventsBufferSeconds": "9999"}
    )
    assert (settings.limit_bytes, settings.timeout_seconds) == (1, 600)
    assert ExportSettings.from_config({}).timeout_seconds == 10
    assert ExportSettings.from_config({}, test_mode=True).timeout_seconds == 600


class ReloadingHost:
    """Plugins that reload: a changed config keeps its buffer, a removed one is flushed first."""

    def __init__(self, made: ExportEventsBuffers, exporter: Exporter) -> None:
        self.made = made
        self.exporter = exporter
        self.enabled = True
        self.reloads = 0

    async def reload_plugins(self) -> None:
        self.reloads += 1
        await asyncio.sleep(0.05)  # reading configs from Postgres
        if self.enabled:
            self.made.configure(CONFIG, {"exportEventsBufferBytes": "2000"})
        else:
            await self.made.remove(CONFIG)


async def test_reload_while_events_flow_loses_none(redis: aioredis.Redis, pg: asyncpg.Pool) -> None:
    exporter, recorder = Exporter(delay=0.01), Recorder()
    made = buffers(
        exporter, recorder, {"exportEventsBufferBytes": "5000", "exportEventsBufferSeconds": "600"}
    )
    host = ReloadingHost(made, exporter)
    listener = ReloadListener(aioredis.Redis.from_url(REDIS_URL), host, plugins_channel="reload-plugins")
    await listener.start()
    sent = 0

    async def produce(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            made.add(CONFIG, event(n=sent))
            sent += 1
            await asyncio.sleep(0.001)

    try:
        producer = asyncio.create_task(produce(400))
        for _ in range(5):
            await redis.publish("reload-plugins", "reload!")
            await asyncio.sleep(0.05)
        await producer
        # the config is disabled: the next reload flushes what is left before teardown
        host.enabled = False
        await redis.publish("reload-plugins", "reload!")
        await asyncio.sleep(0.2)
        await listener.wait_idle()
    finally:
        await listener.stop()
    exported = [e["n"] for batch in exporter.batches for e in batch]
    assert sorted(exported) == list(range(sent))
    assert host.reloads >= 2


class CountingHost:
    def __init__(self) -> None:
        self.reloads = 0
        self.running = 0
        self.overlapped = False

    async def reload_plugins(self) -> None:
        self.running += 1
        self.overlapped |= self.running > 1
        self.reloads += 1
        await asyncio.sleep(0.3)
        self.running -= 1


class Actions:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    async def reload_action(self, team_id: int, action_id: int) -> None:
        self.calls.append(("reload", team_id, action_id))

    async def drop_action(self, team_id: int, action_id: int) -> None:
        self.calls.append(("drop", team_id, action_id))


async def test_reload_bursts_are_serialised_and_coalesced(redis: aioredis.Redis) -> None:
    host, actions = CountingHost(), Actions()
    listener = ReloadListener(
        aioredis.Redis.from_url(REDIS_URL), host, actions, plugins_channel="reload-plugins"
    )
    await listener.start()
    try:
        await redis.publish("reload-plugins", "reload!")
        await asyncio.sleep(0.1)  # the first reload is running
        for _ in range(10):
            await redis.publish("reload-plugins", "reload!")
        await redis.publish("reload-action", json.dumps({"teamId": 2, "actionId": 69}))
        await redis.publish("drop-action", json.dumps({"teamId": 2, "actionId": 69}))
        await redis.publish("drop-action", "not json")  # logged; the next message flows
        await redis.publish("reload-action", json.dumps({"teamId": 2, "actionId": 70}))
        await asyncio.sleep(0.2)
        await listener.wait_idle()
    finally:
        await listener.stop()
    assert host.reloads == 2  # the running one, then one for the whole burst
    assert not host.overlapped
    assert actions.calls == [("reload", 2, 69), ("drop", 2, 69), ("reload", 2, 70)]
