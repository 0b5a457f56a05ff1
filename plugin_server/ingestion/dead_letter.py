"""The dead-letter queue: where a message or event that cannot be ingested is kept, with the reason.

Recording is part of acknowledging: a consumer lets go of a message only once its dead-letter
record is written, so a message is either ingested or dead-lettered, never silently lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from prometheus_client import Counter

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY

DEAD_LETTERS = Counter(
    "plugin_server_dead_letter",
    "Messages and events recorded in the dead-letter queue, by the stage that failed",
    ["stage"],
    registry=REGISTRY,
)

_INSERT = Path(__file__).with_name("dead_letter.sql").read_text()

log = get_logger(__name__)


class DeadLetterQueue(Protocol):
    async def record(
        self,
        raw: bytes | str | None,
        error: str,
        stage: str,
        team_id: int | None = None,
        event: dict[str, Any] | None = None,
    ) -> None:
        """Store the failure durably; raise if it could not be stored (the caller keeps the message)."""
        ...


def _text(value: str) -> str:
    # Postgres text cannot hold NUL.
    return value.replace("\x00", "\\u0000")


def _raw_bytes(raw: bytes | str | None) -> bytes | None:
    if raw is None or isinstance(raw, bytes):
        return raw
    return raw.encode("utf-8", "backslashreplace")


def _event_json(event: dict[str, Any] | None) -> str | None:
    if event is None:
        return None
    try:
        return json.dumps(event, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        return None


class PostgresDeadLetterQueue:
    """Dead letters as rows of `plugin_server_dead_letter` (Postgres mode)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(
        self,
        raw: bytes | str | None,
        error: str,
        stage: str,
        team_id: int | None = None,
        event: dict[str, Any] | None = None,
    ) -> None:
        raw_bytes = _raw_bytes(raw)
        event_text = _event_json(event)
        try:
            await self._pool.execute(_INSERT, _text(stage), _text(error), team_id, event_text, raw_bytes)
        except (asyncpg.DataError, UnicodeEncodeError) as exc:
            if event_text is None:
                raise
            # The event itself is what Postgres refuses (NUL, lone surrogates): keep the raw message
            # and the reason, without the parsed event.
            note = f"{error} (event not storable as jsonb: {exc})"
            await self._pool.execute(_INSERT, _text(stage), _text(note), team_id, None, raw_bytes)
        DEAD_LETTERS.labels(stage).inc()
