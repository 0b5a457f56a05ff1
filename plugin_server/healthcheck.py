"""`--healthcheck`: healthy when the ping key the running server refreshes every 5 s exists."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.logs import get_logger
from plugin_server.services.status import PING_KEY

log = get_logger(__name__)
CONNECT_TIMEOUT_SECONDS = 5.0


async def healthcheck(settings: Settings) -> int:
    client = aioredis.Redis.from_url(
        settings.redis_dsn,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=CONNECT_TIMEOUT_SECONDS,
    )
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS * 2):
            value = await client.get(PING_KEY)
    except Exception as exc:
        log.error("💥 An unexpected error occurred:", error=repr(exc))
        return 1
    finally:
        await client.aclose()
    if value:
        text = value.decode() if isinstance(value, bytes) else str(value)
        log.info(f"💚 Redis key {PING_KEY} found with value {text}")
        return 0
    log.error(f"💔 Redis key {PING_KEY} not found! Plugin server seems to be offline")
    return 1
