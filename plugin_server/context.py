"""What every service is given: the settings and the live connections of this process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.services.staleness import Activity


@dataclass(slots=True)
class AppContext:
    settings: Settings
    instance_id: str
    postgres: asyncpg.Pool
    redis: aioredis.Redis
    # When an event was last handed on (the staleness watchdog reads it); consumers touch it.
    activity: Activity = field(default_factory=Activity)
    # Shared objects services publish for each other (plugin runner, job queue, ...), by name.
    extras: dict[str, Any] = field(default_factory=dict)
