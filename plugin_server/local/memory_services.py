"""`meta.cache`, `meta.storage` and `meta.utils.cursor` kept in memory, for running a plugin
without Redis or Postgres. Same service names and answers as plugins/meta_services.py."""

from __future__ import annotations

import time
from typing import Any

from plugin_server.plugins.host_services import HostServices, PluginContext


class MemoryCache:
    """The few Redis operations `meta.cache` uses, on plain Python values (strings and lists)."""

    def __init__(self) -> None:
        self.values: dict[str, str | list[str]] = {}
        self._expires: dict[str, float] = {}

    def _live(self, key: str) -> str | list[str] | None:
        expires = self._expires.get(key)
        if expires is not None and expires <= time.monotonic():
            self.values.pop(key, None)
            self._expires.pop(key, None)
        return self.values.get(key)

    def _list(self, key: str) -> list[str]:
        value = self._live(key)
        if value is None:
            value = self.values[key] = []
        if not isinstance(value, list):
            raise TypeError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return value

    def set(self, key: str, value: str, ttl: float | None) -> None:
        self.values[key] = value
        self._expires.pop(key, None)
        if ttl:
            self.expire(key, ttl)

    def get(self, key: str) -> str | None:
        value = self._live(key)
        if isinstance(value, list):
            raise TypeError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return value

    def incr(self, key: str) -> int:
        number = int(self.get(key) or 0) + 1
        self.values[key] = str(number)
        return number

    def expire(self, key: str, ttl: float) -> bool:
        if self._live(key) is None:
            return False
        self._expires[key] = time.monotonic() + int(ttl)
        return True

    def lpush(self, key: str, items: list[str]) -> int:
        values = self._list(key)
        for item in items:
            values.insert(0, item)
        return len(values)

    def lrange(self, key: str, start: int, end: int) -> list[str]:
        values = self._live(key)
        if not isinstance(values, list):
            return []
        size = len(values)
        first = max(start + size if start < 0 else start, 0)
        last = end + size if end < 0 else min(end, size - 1)
        return values[first : last + 1]

    def llen(self, key: str) -> int:
        values = self._live(key)
        return len(values) if isinstance(values, list) else 0

    def lrem(self, key: str, count: int, element: str) -> int:
        values = self._live(key)
        if not isinstance(values, list):
            return 0
        indexes = [i for i, v in enumerate(values) if v == element]
        if count < 0:
            indexes = indexes[::-1][:-count]
        elif count > 0:
            indexes = indexes[:count]
        for index in sorted(indexes, reverse=True):
            del values[index]
        return len(indexes)

    def lpop(self, key: str, count: int) -> list[str] | None:
        values = self._live(key)
        if not isinstance(values, list) or not values:
            return None
        popped, values[:] = values[:count], values[count:]
        return popped


def register_memory_cache(services: HostServices, cache: MemoryCache) -> None:
    """One cache for the run: a single plugin config, so keys need no prefix."""
    handlers: dict[str, Any] = {
        "cache.set": lambda ctx, key, value, ttl: cache.set(key, value, ttl),
        "cache.get": lambda ctx, key: cache.get(key),
        "cache.incr": lambda ctx, key: cache.incr(key),
        "cache.expire": lambda ctx, key, ttl: cache.expire(key, ttl),
        "cache.lpush": lambda ctx, key, items: cache.lpush(key, items),
        "cache.lrange": lambda ctx, key, start, end: cache.lrange(key, start, end),
        "cache.llen": lambda ctx, key: cache.llen(key),
        "cache.lrem": lambda ctx, key, count, element: cache.lrem(key, count, element),
        "cache.lpop": lambda ctx, key, count: cache.lpop(key, count),
    }
    for name, handler in handlers.items():
        services.register(name, handler)


def register_memory_storage(services: HostServices, storage: dict[str, str]) -> None:
    """`storage` maps keys to the JSON text the plugin stored; cursors live there too."""

    def storage_get(ctx: PluginContext, key: str) -> tuple[bool, str | None]:
        return (key in storage, storage.get(key))

    def storage_set(ctx: PluginContext, key: str, text: str) -> None:
        storage[key] = text

    def storage_delete(ctx: PluginContext, key: str) -> None:
        storage.pop(key, None)

    def cursor_init(ctx: PluginContext, key: str, initial: float) -> None:
        storage.setdefault(key, _number_text(initial))

    def cursor_increment(ctx: PluginContext, key: str, by: float) -> float:
        value = float(storage.get(key, "0")) + by
        storage[key] = _number_text(value)
        return int(value) if value.is_integer() else value

    services.register("storage.get", storage_get)
    services.register("storage.set", storage_set)
    services.register("storage.delete", storage_delete)
    services.register("cursor.init", cursor_init)
    services.register("cursor.increment", cursor_increment)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
