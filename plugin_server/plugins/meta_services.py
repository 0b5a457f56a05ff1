"""Host services behind `meta`: cache (Redis, §4.3), storage (§4.4), utils.cursor (§4.5),
console (§4.9.1) and metrics (§4.8). Registered on a HostServices by `register_meta_services`;
`register_cache_services` and `register_storage_services` alone serve a plugin run outside the
server (plugin_server/local/)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.plugins import queries
from plugin_server.plugins.host_services import HostServices, PluginContext
from plugin_server.plugins.logs import LogTarget, PluginLogSink
from plugin_server.services.plugin_host import PluginConfigRef
from plugin_server.services.plugin_metrics import OPERATIONS, PluginMetrics

CONSOLE_TYPES = frozenset({"DEBUG", "LOG", "INFO", "WARN", "ERROR"})


def cache_key(context: PluginContext, key: str) -> str:
    team = "@all" if context.team_id is None else context.team_id
    return f"@plugin/{context.plugin_id}/{team}/{key}"


def log_target(context: PluginContext) -> LogTarget:
    return LogTarget(context.team_id or 0, context.plugin_id, context.plugin_config_id)


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def config_ref(context: PluginContext, plugin_tag: str | None = None) -> PluginConfigRef:
    """The host services' name for the plugin config a request came from."""
    return PluginConfigRef(
        id=context.plugin_config_id,
        team_id=context.team_id or 0,
        plugin_id=context.plugin_id,
        plugin_name=context.plugin_name,
        plugin_tag=plugin_tag,
        organization_id=context.organization_id,
    )


def register_meta_services(
    services: HostServices,
    pg: asyncpg.Pool,
    redis: aioredis.Redis,
    logs: PluginLogSink,
    metrics: PluginMetrics,
) -> None:
    register_cache_services(services, redis)
    register_storage_services(services, pg)

    def console(ctx: PluginContext, level: str, message: str) -> None:
        logs.write(log_target(ctx), "CONSOLE", level if level in CONSOLE_TYPES else "LOG", message)

    def metrics_update(ctx: PluginContext, name: str, kind: str, value: float) -> None:
        metrics.update(config_ref(ctx), name, OPERATIONS[kind], value)

    services.register("console", console)
    services.register("metrics.update", metrics_update)


def register_cache_services(services: HostServices, redis: aioredis.Redis) -> None:
    """`meta.cache` on Redis."""

    async def cache_set(ctx: PluginContext, key: str, value: str, ttl: float | None) -> None:
        if ttl:
            await redis.set(cache_key(ctx, key), value, ex=int(ttl))
        else:
            await redis.set(cache_key(ctx, key), value)

    async def cache_get(ctx: PluginContext, key: str) -> Any:
        return _text(await redis.get(cache_key(ctx, key)))

    async def cache_incr(ctx: PluginContext, key: str) -> int:
        return int(await redis.incr(cache_key(ctx, key)))

    async def cache_expire(ctx: PluginContext, key: str, ttl: float) -> bool:
        return bool(await redis.expire(cache_key(ctx, key), int(ttl)))

    async def cache_lpush(ctx: PluginContext, key: str, items: list[str]) -> int:
        return int(await redis.lpush(cache_key(ctx, key), *items))

    async def cache_lrange(ctx: PluginContext, key: str, start: int, end: int) -> list[str]:
        return [_text(v) for v in await redis.lrange(cache_key(ctx, key), start, end)]

    async def cache_llen(ctx: PluginContext, key: str) -> int:
        return int(await redis.llen(cache_key(ctx, key)))

    async def cache_lrem(ctx: PluginContext, key: str, count: int, element: str) -> int:
        return int(await redis.lrem(cache_key(ctx, key), count, element))

    async def cache_lpop(ctx: PluginContext, key: str, count: int) -> list[str] | None:
        popped = await redis.lpop(cache_key(ctx, key), count)
        return None if popped is None else [_text(v) for v in popped]

    handlers: dict[str, Any] = {
        "cache.set": cache_set,
        "cache.get": cache_get,
        "cache.incr": cache_incr,
        "cache.expire": cache_expire,
        "cache.lpush": cache_lpush,
        "cache.lrange": cache_lrange,
        "cache.llen": cache_llen,
        "cache.lrem": cache_lrem,
        "cache.lpop": cache_lpop,
    }
    for name, handler in handlers.items():
        services.register(name, handler)


def register_storage_services(services: HostServices, pg: asyncpg.Pool) -> None:
    """`meta.storage` and `meta.utils.cursor` on Postgres."""

    async def storage_get(ctx: PluginContext, key: str) -> tuple[bool, str | None]:
        row = await pg.fetchrow(queries.STORAGE_GET, ctx.plugin_config_id, key)
        return (False, None) if row is None else (True, row["value"])

    async def storage_set(ctx: PluginContext, key: str, text: str) -> None:
        await pg.execute(queries.STORAGE_SET, ctx.plugin_config_id, key, text)

    async def storage_delete(ctx: PluginContext, key: str) -> None:
        await pg.execute(queries.STORAGE_DELETE, ctx.plugin_config_id, key)

    async def cursor_init(ctx: PluginContext, key: str, initial: float) -> None:
        await pg.execute(queries.CURSOR_INIT, ctx.plugin_config_id, key, _number_text(initial))

    async def cursor_increment(ctx: PluginContext, key: str, by: float) -> float:
        value = await pg.fetchval(queries.CURSOR_INCREMENT, ctx.plugin_config_id, key, _number_text(by))
        number = Decimal(value)
        return int(number) if number == number.to_integral_value() else float(number)

    handlers: dict[str, Any] = {
        "storage.get": storage_get,
        "storage.set": storage_set,
        "storage.delete": storage_delete,
        "cursor.init": cursor_init,
        "cursor.increment": cursor_increment,
    }
    for name, handler in handlers.items():
        services.register(name, handler)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
