"""Kafka mode through the real server: a Python plugin's log entries go to the
plugin_log_entries topic (not the Postgres table), produced by the server's shared producer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from plugin_server.config import Settings
from plugin_server.ingestion import kafka_messages as km
from plugin_server.ingestion.uuidt import uuidt
from tests.factories import capture_message
from tests.integration.conftest import wait_until
from tests.kafka_topics import TopicTail, ensure_topics, produce
from tests.plugins.conftest import add_python_plugin


def django_value(event_uuid: str, seq: int) -> bytes:
    return capture_message(event_uuid, seq, distinct_id=f"user-{seq}")


async def test_plugin_log_entries_go_to_kafka_in_kafka_mode(
    settings_factory: Callable[..., Settings],
    run_server: Any,
    pg: asyncpg.Pool,
    team: int,
    kafka_bootstrap: str,
) -> None:
    await add_python_plugin(
        pg,
        """
        def process_event(event, meta):
            meta.console.log("saw", event["properties"]["seq"])
            return event
        """,
    )
    topic = f"events_plugin_ingestion_{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [topic], 1)
    settings = settings_factory(
        kafka_enabled=True, kafka_hosts=kafka_bootstrap, kafka_consumption_topic=topic
    )
    async with TopicTail(kafka_bootstrap, [km.TOPIC_EVENTS, km.TOPIC_PLUGIN_LOG_ENTRIES]) as tail:
        async with run_server(settings) as server:

            async def consuming() -> bool:
                server._readiness_cache = None
                return "kafka-consumer" not in await server.readiness()

            await wait_until(consuming, 40)
            await produce(kafka_bootstrap, topic, [django_value(uuidt(), 4)])
            await tail.read(km.TOPIC_EVENTS, 1, within=30)
            entries = await tail.read(km.TOPIC_PLUGIN_LOG_ENTRIES, 2, within=30)
    values = [json.loads(m.value) for m in entries]
    console = [v for v in values if v["source"] == "CONSOLE"]
    assert [(v["type"], v["message"]) for v in console] == [("LOG", "saw 4")]
    assert console[0]["plugin_config_id"] == 39 and console[0]["team_id"] == 2
    assert console[0]["instance_id"] == server.instance_id
    # the SYSTEM "Plugin loaded" entry went the same way; nothing was written to the table
    assert any(v["source"] == "SYSTEM" for v in values)
    assert await pg.fetchval("SELECT count(*) FROM posthog_pluginlogentry") == 0
