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
        # Explicit, so blocking reads (BLMOVE) can stay below it; redis-py 8 otherwise applies
        # a hidden 5 s default that fails a 5 s blocking wait.
        socket_timeout=30,
        health_check_interval=30,
        decode_responses=False,
    )
