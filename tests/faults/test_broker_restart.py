"""Kafka mode while the broker restarts mid-stream (Tansu on S3 storage keeps topics and committed
offsets): every event produced comes out on clickhouse_events_proto, none lost."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from plugin_server.ingestion import kafka_messages as km
from tests.conftest import OUTPUT_TOPICS
from tests.factories import capture_message
from tests.faults.broker import persistent_broker
from tests.faults.rig import rig, wait_for
from tests.kafka_topics import TopicTail, ensure_topics, produce

TOPIC = "events_plugin_ingestion"
WAVE = 500


def django_value(event_uuid: str, seq: int) -> bytes:
    return capture_message(event_uuid, seq, distinct_id=f"user-{seq % 50}")


async def produce_wave(bootstrap: str, sent: list[str]) -> None:
    wave = [str(uuid.uuid4()) for _ in range(WAVE)]
    await produce(bootstrap, TOPIC, [django_value(u, len(sent) + i) for i, u in enumerate(wave)])
    sent.extend(wave)


async def test_broker_restarted_mid_stream_loses_no_event(clickhouse_host: str) -> None:
    sent: list[str] = []
    with persistent_broker() as broker:
        await ensure_topics(broker.bootstrap, OUTPUT_TOPICS, partitions=1)
        await ensure_topics(broker.bootstrap, [TOPIC], partitions=2)
        async with rig() as (the_rig, _pg, _redis):
            the_rig.start_server(
                KAFKA_ENABLED="true",
                KAFKA_HOSTS=broker.bootstrap,
                KAFKA_CONSUMPTION_TOPIC=TOPIC,
                CLICKHOUSE_HOST=clickhouse_host,  # Kafka mode's readiness includes ClickHouse
            )
            await the_rig.wait_ready(90)
            async with TopicTail(broker.bootstrap, [km.TOPIC_EVENTS]) as tail:

                async def out() -> Counter[str]:
                    messages = await tail.settle(0.2)
                    return Counter(km.decode_event_proto(m.value)["uuid"] for m in messages[km.TOPIC_EVENTS])

                for how in ("terminate", "kill"):  # SIGTERM, then as by a crash
                    await produce_wave(broker.bootstrap, sent)
                    await tail.read(km.TOPIC_EVENTS, len(sent) - WAVE + 1, within=60)  # mid-stream
                    broker.stop(how)
                    await asyncio.sleep(0.5)
                    broker.start()
                await produce_wave(broker.bootstrap, sent)

                async def all_out() -> bool:
                    return set(sent) <= set(await out())

                await wait_for(all_out, 120, "every event out")
                produced = await out()
    assert set(sent) <= set(produced)  # none lost
    duplicates = sum(n - 1 for n in produced.values())
    print(f"{len(sent)} events, {duplicates} produced twice (at-least-once; same uuid)")
