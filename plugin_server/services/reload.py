"""Listens on the reload channels the PostHog app publishes to (services §3).

One dedicated Redis connection subscribes to PLUGINS_RELOAD_PUBSUB_CHANNEL, `reload-action`
and `drop-action`. Plugin reloads run one at a time, and any number of messages arriving
while one runs (or within a short settling window) lead to exactly one more reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.services.plugin_host import ActionReloadHost, ReloadHost

RELOAD_ACTION_CHANNEL = "reload-action"
DROP_ACTION_CHANNEL = "drop-action"

RELOADS = Counter(
    "plugin_server_plugin_reloads_total",
    "Plugin reloads run (bursts of messages coalesced)",
    ["outcome"],
    registry=REGISTRY,
)
RELOAD_MESSAGES = Counter(
    "plugin_server_reload_messages_total",
    "Messages received on the reload channels",
    ["channel"],
    registry=REGISTRY,
)

log = get_logger(__name__)


class ReloadListener:
    name = "reload-listener"

    def __init__(
        self,
        redis: aioredis.Redis,
        plugins: ReloadHost,
        actions: ActionReloadHost | None = None,
        *,
        plugins_channel: str = "reload-plugins",
        settle_seconds: float = 0.05,
    ) -> None:
        self._redis = redis
        self._plugins = plugins
        self._actions = actions
        self.plugins_channel = plugins_channel
        self.channels = (plugins_channel, RELOAD_ACTION_CHANNEL, DROP_ACTION_CHANNEL)
        self._settle = settle_seconds
        self._pubsub: aioredis.client.PubSub | None = None
        self._reload_wanted = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        if self._pubsub is not None:
            raise RuntimeError("reload listener already started")
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(*self.channels)
        self._tasks = [
            asyncio.create_task(self._receive(), name="reload-receive"),
            asyncio.create_task(self._reload_forever(), name="reload-run"),
        ]
        log.info("👀 Pub-sub started for channels", channels=list(self.channels))

    async def _receive(self) -> None:
        assert self._pubsub is not None
        failures = 0
        while not self._stopping:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                failures = 0
            except (RedisError, OSError) as exc:
                # redis-py resubscribes on reconnect; back off and keep listening
                failures += 1
                log.warning("pub-sub connection error", error=repr(exc))
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = _text(message["channel"])
            RELOAD_MESSAGES.labels(channel).inc()
            if channel == self.plugins_channel:
                log.info("⚡ Reloading plugins!")
                self.request_reload()
            else:
                await self._handle_action(channel, message["data"])

    def request_reload(self) -> None:
        self._idle.clear()
        self._reload_wanted.set()

    async def _handle_action(self, channel: str, data: bytes | str) -> None:
        if self._actions is None:
            return
        try:
            body = json.loads(data)
            team_id, action_id = int(body["teamId"]), int(body["actionId"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error("invalid action reload message", channel=channel, data=_text(data), error=repr(exc))
            return
        try:
            if channel == RELOAD_ACTION_CHANNEL:
                await self._actions.reload_action(team_id, action_id)
            else:
                await self._actions.drop_action(team_id, action_id)
        except Exception as exc:
            log.error(
                "action reload failed", channel=channel, team_id=team_id, action_id=action_id, error=repr(exc)
            )

    async def _reload_forever(self) -> None:
        while not self._stopping:
            await self._reload_wanted.wait()
            # let a burst of messages arrive, so they make one reload
            await asyncio.sleep(self._settle)
            self._reload_wanted.clear()
            try:
                await self._plugins.reload_plugins()
                RELOADS.labels("ok").inc()
            except Exception as exc:
                RELOADS.labels("error").inc()
                log.error("plugin reload failed", error=repr(exc), exc_info=exc)
            if not self._reload_wanted.is_set():
                self._idle.set()

    async def wait_idle(self) -> None:
        """Until no reload is running or wanted."""
        await self._idle.wait()

    async def stop(self) -> None:
        if self._pubsub is None:
            raise RuntimeError("reload listener not started")
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.unsubscribe()
            await self._pubsub.aclose()
        self._pubsub = None
        log.info("🛑 Pub-sub stopped for channels", channels=list(self.channels))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
