"""The host side of a JS plugin's `meta`, `console`, `fetch` and `posthog` (spec plugins.md §4),
bound to one plugin config: Redis cache, Postgres storage and cursors, plugin log entries,
plugin errors, metrics; capture, api, geoip and jobs through hooks the server provides.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from plugin_server.plugins.js.isolate import JSError
from plugin_server.plugins.js.queries import (
    CURSOR_INCREMENT,
    CURSOR_INIT,
    INSERT_LOG_ENTRY,
    SET_PLUGIN_CONFIG_ERROR,
    STORAGE_DELETE,
    STORAGE_GET,
    STORAGE_SET,
)

Hook = Callable[..., Awaitable[Any]]
NO_GEOIP = "IP location capabilities are not available in this PostHog instance!"


@dataclass(slots=True)
class PluginConfigRef:
    """Which plugin config a host serves."""

    plugin_config_id: int
    plugin_id: int
    team_id: int | None
    plugin_name: str


@dataclass
class JSPluginHost:
    """A `JSHost` on real stores. Hooks left as None make the matching call fail clearly."""

    ref: PluginConfigRef
    pg: asyncpg.Pool
    redis: aioredis.Redis
    instance_id: uuid.UUID
    http: aiohttp.ClientSession | None = None
    capture: Hook | None = None  # (plugin config ref, event, properties)
    api: Hook | None = None  # (plugin config ref, method, path, options) -> response dict
    geoip: Hook | None = None  # (ip) -> City record in camelCase, or None
    enqueue_job: Hook | None = None  # (job record of spec §3.7)
    metrics: dict[str, float] = field(default_factory=dict)

    # -- JSHost
    async def call(self, op: str, args: list[Any]) -> Any:
        handler = getattr(self, "_op_" + op.replace(".", "_"), None)
        if handler is None:
            raise JSError("Error", f"Unknown host call {op}")
        return await handler(*args)

    def notify(self, op: str, args: list[Any]) -> None:
        if op == "metric":
            self._update_metric(*args)
        elif op == "unhandledRejection":  # attributed directly: one isolate per plugin config
            asyncio.get_running_loop().create_task(self.record_error(JSError.from_data(args[0])))

    # -- logs and errors (spec §2.10, §2.12)
    async def log(self, source: str, kind: str, message: str, timestamp: datetime | None = None) -> None:
        if self.ref.team_id is None:
            return
        await self.pg.execute(
            INSERT_LOG_ENTRY,
            uuid.uuid4(),
            self.ref.team_id,
            self.ref.plugin_id,
            self.ref.plugin_config_id,
            timestamp or datetime.now(UTC),
            source,
            kind,
            message,
            self.instance_id,
        )

    async def record_error(self, error: JSError, event: dict[str, Any] | None = None) -> None:
        now = datetime.now(UTC)
        data: dict[str, Any] = {
            "message": error.message,
            "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "name": error.name,
            "stack": error.stack,
        }
        if event is not None:
            data["event"] = event
        await self.pg.execute(SET_PLUGIN_CONFIG_ERROR, data, self.ref.plugin_config_id)
        await self.log("PLUGIN", "ERROR", error.message, now)

    # -- console
    async def _op_console(self, kind: str, message: str) -> None:
        await self.log("CONSOLE", kind, message)

    # -- cache (spec §4.3)
    def _key(self, key: str) -> str:
        team = "@all" if self.ref.team_id is None else str(self.ref.team_id)
        return f"@plugin/{self.ref.plugin_id}/{team}/{key}"

    async def _op_cache_set(self, key: str, value: Any, ttl: float) -> None:
        await self.redis.set(self._key(key), value, ex=int(ttl) if ttl else None)

    async def _op_cache_get(self, key: str) -> str | None:
        raw = await self.redis.get(self._key(key))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def _op_cache_incr(self, key: str) -> int:
        return int(await self.redis.incr(self._key(key)))

    async def _op_cache_expire(self, key: str, ttl: float) -> bool:
        return bool(await self.redis.expire(self._key(key), int(ttl)))

    async def _op_cache_lpush(self, key: str, elements: list[str]) -> int:
        return int(await self.redis.lpush(self._key(key), *elements)) if elements else 0

    async def _op_cache_lrange(self, key: str, start: int, end: int) -> list[str]:
        return [_text(v) for v in await self.redis.lrange(self._key(key), start, end)]

    async def _op_cache_llen(self, key: str) -> int:
        return int(await self.redis.llen(self._key(key)))

    async def _op_cache_lrem(self, key: str, count: int, element: str) -> int:
        return int(await self.redis.lrem(self._key(key), count, element))

    async def _op_cache_lpop(self, key: str, count: int) -> list[str] | None:
        values = await self.redis.lpop(self._key(key), count)
        return None if values is None else [_text(v) for v in values]

    # -- storage and cursors (spec §4.4, §4.5)
    async def _op_storage_get(self, key: str) -> str | None:
        value: str | None = await self.pg.fetchval(STORAGE_GET, self.ref.plugin_config_id, key)
        return value

    async def _op_storage_set(self, key: str, value: str) -> None:
        await self.pg.execute(STORAGE_SET, self.ref.plugin_config_id, key, value)

    async def _op_storage_del(self, key: str) -> None:
        await self.pg.execute(STORAGE_DELETE, self.ref.plugin_config_id, key)

    async def _op_cursor_init(self, key: str, value: float) -> None:
        await self.pg.execute(CURSOR_INIT, self.ref.plugin_config_id, key, _number_text(value))

    async def _op_cursor_increment(self, key: str, by: float) -> float:
        value = await self.pg.fetchval(CURSOR_INCREMENT, self.ref.plugin_config_id, key, _number_text(by))
        number = float(value)
        return int(number) if number.is_integer() else number

    # -- metrics (spec §4.8): a missing value or 0 is replaced, as in the original
    def _update_metric(self, name: str, kind: str, value: float) -> None:
        current = self.metrics.get(name)
        if not current:
            self.metrics[name] = value
        elif kind == "sum":
            self.metrics[name] = current + value
        elif kind == "max":
            self.metrics[name] = max(current, value)
        else:
            self.metrics[name] = min(current, value)

    # -- fetch (spec §4.9.4)
    async def _op_fetch(self, url: str, request: dict[str, Any]) -> dict[str, Any]:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        return await http_fetch(self.http, url, request)

    # -- hooks
    async def _op_posthog_capture(self, event: str, properties: dict[str, Any]) -> None:
        if self.capture is None:
            raise JSError("Error", "posthog.capture is not available in this PostHog instance!")
        await self.capture(self.ref, event, properties)

    async def _op_posthog_api(self, method: str, path: str, options: dict[str, Any]) -> dict[str, Any]:
        if self.api is None:
            raise JSError("Error", "posthog.api is not available in this PostHog instance!")
        result: dict[str, Any] = await self.api(self.ref, method, path, options)
        return result

    async def _op_geoip_locate(self, ip: str) -> Any:
        if self.geoip is None:
            raise JSError("Error", NO_GEOIP)
        return await self.geoip(ip)

    async def _op_jobs_enqueue(self, name: str, payload: Any, timestamp: float) -> None:
        if self.enqueue_job is None:
            raise JSError("Error", "No JobQueue available")
        await self.enqueue_job(
            {
                "type": name,
                "payload": payload,
                "timestamp": int(timestamp),
                "pluginConfigId": self.ref.plugin_config_id,
                "pluginConfigTeam": self.ref.team_id,
            }
        )

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


async def http_fetch(session: aiohttp.ClientSession, url: str, request: dict[str, Any]) -> dict[str, Any]:
    """A plugin's `fetch` (request and response as prelude.js encodes them)."""
    body = base64.b64decode(request["body"]) if request.get("body") is not None else None
    timeout = aiohttp.ClientTimeout(total=request["timeout"] / 1000) if request.get("timeout") else None
    try:
        async with session.request(
            request["method"],
            url,
            headers=[(k, v) for k, v in request.get("headers", [])],
            data=body,
            allow_redirects=request.get("redirect", "follow") == "follow",
            timeout=timeout,
        ) as response:
            content = await response.read()
            return {
                "status": response.status,
                "statusText": response.reason or "",
                "url": str(response.url),
                "headers": list(response.headers.items()),
                "body": base64.b64encode(content).decode(),
            }
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise JSError("FetchError", f"request to {url} failed, reason: {reason}") from exc
