"""Redis clients: the shared pool, and dedicated connections for pub/sub and locks."""

from __future__ import annotations

import redis.asyncio as aioredis

from plugin_server.config import Settings


def create_redis(settings: Settings, *, max_connections: int | None = None) -> aioredis.Redis:
    # The original sized its pool per thread (3); one process here serves every consumer, so allow more.
    size = max_connections or max(settings.redis_pool_max_size, 20)
    return aioredis.Redis.from_url(
        settings.redis_dsn,
        max_connections=size,
        socket_connect_timeout=5,
        health_check_interval=30,
        decode_responses=False,
    )
