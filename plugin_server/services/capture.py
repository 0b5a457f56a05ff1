"""`posthog.capture(event, properties)` for plugins (plugins §4.9.2).

The new event goes back onto the ingestion queue of the plugin config's team, in the same
format the PostHog app uses: a Celery task on PLUGINS_CELERY_QUEUE, or in Kafka mode a message
on KAFKA_CONSUMPTION_TOPIC. It then passes through every plugin like any other event.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
from prometheus_client import Counter

from plugin_server.ingestion.uuidt import uuidt
from plugin_server.metrics import REGISTRY
from plugin_server.queues.celery_format import encode_plugin_capture
from plugin_server.services.plugin_host import PluginConfigRef
from plugin_server.version import VERSION

CAPTURES = Counter(
    "plugin_server_plugin_captures_total", "Events captured by plugins", ["sink"], registry=REGISTRY
)


class MessageProducer(Protocol):
    def send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Any]: ...


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_capture(ref: PluginConfigRef, event: str, properties: Mapping[str, Any] | None) -> dict[str, Any]:
    """The event data a plugin capture produces (distinct id defaults to the plugin's name)."""
    other = dict(properties or {})
    distinct_id = other.pop("distinct_id", None) or ref.plugin_name or f"plugin-id-{ref.plugin_id}"
    timestamp = other.pop("timestamp", None) or iso_now()
    props = {"$lib": "posthog-plugin-server", "$lib_version": VERSION, "distinct_id": distinct_id, **other}
    return {
        "distinct_id": distinct_id,
        "event": event,
        "timestamp": timestamp,
        "properties": props,
        "team_id": ref.team_id,
        "uuid": uuidt(),
    }


class PluginCapture:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        celery_queue: str,
        kafka_producer: MessageProducer | None = None,
        kafka_topic: str = "events_plugin_ingestion",
    ) -> None:
        self._redis = redis
        self._queue = celery_queue
        self._kafka = kafka_producer
        self._topic = kafka_topic

    async def capture(
        self, ref: PluginConfigRef, event: str, properties: Mapping[str, Any] | None = None
    ) -> None:
        if not isinstance(event, str) or not event:
            raise ValueError("posthog.capture needs an event name")
        data = build_capture(ref, event, properties)
        timestamp = str(data["timestamp"])
        if self._kafka is not None:
            message = {
                "distinct_id": data["distinct_id"],
                "ip": "",
                "site_url": "",
                "data": json.dumps(data, separators=(",", ":")),
                "team_id": ref.team_id,
                "now": timestamp,
                "sent_at": timestamp,
                "uuid": data["uuid"],
            }
            await self._kafka.send(
                self._topic, str(data["uuid"]).encode(), json.dumps(message, separators=(",", ":")).encode()
            )
            CAPTURES.labels("kafka").inc()
            return
        element = encode_plugin_capture(data, ref.team_id, timestamp, queue=self._queue)
        await self._redis.lpush(self._queue, element)
        CAPTURES.labels("celery").inc()
