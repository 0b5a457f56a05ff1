"""Keeps the action cache current: a full reload every 5 minutes and the `reload-action` /
`drop-action` Redis pub/sub messages the PostHog app publishes (spec/ingestion.md §2.12.1)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from plugin_server.ingestion.actions import (
    DROP_ACTION_CHANNEL,
    RELOAD_ACTION_CHANNEL,
    RELOAD_INTERVAL_SECONDS,
    ActionCache,
)
from plugin_server.logs import get_logger

log = get_logger(__name__)


class ActionReloads:
    """A looping service (start / run / stop) over one pub/sub connection."""

    name = "action-reloads"

    def __init__(
        self, redis: aioredis.Redis, actions: ActionCache, reload_interval: float = RELOAD_INTERVAL_SECONDS
    ) -> None:
        self._redis = redis
        self._actions = actions
        self._reload_interval = reload_interval
        self._stopped = asyncio.Event()
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        await self._actions.reload_all()

    async def run(self) -> None:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(RELOAD_ACTION_CHANNEL, DROP_ACTION_CHANNEL)
        self.subscribed.set()
        next_reload = time.monotonic() + self._reload_interval
        try:
            while not self._stopped.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message.get("type") == "message":
                    channel = message["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    await self._actions.handle_message(channel, message["data"])
                if time.monotonic() >= next_reload:
                    next_reload = time.monotonic() + self._reload_interval
                    await self._actions.reload_all()
        finally:
            self.subscribed.clear()
            await pubsub.aclose()

    async def stop(self) -> None:
        self._stopped.set()
