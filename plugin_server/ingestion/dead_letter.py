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

from plugin_server.db.errors import is_outage
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
        *,
        message_id: bytes | None = None,
    ) -> None:
        """Store the failure durably; raise if it could not be stored (the caller keeps the message).
        With `message_id`, a message recorded (or committed) before is not recorded again."""
        ...


# An error text longer than this is cut (the raw message is always kept whole).
MAX_ERROR_CHARS = 10_000
_INT4 = range(-(2**31), 2**31)


def _text(value: str) -> str:
    """Text Postgres can store: NUL and lone surrogates written as escapes."""
    value = value.replace("\x00", "\\u0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _raw_bytes(raw: bytes | str | None) -> bytes | None:
    if raw is None or isinstance(raw, bytes):
        return raw
    return raw.encode("utf-8", "backslashreplace")


def _team_column(team_id: Any) -> tuple[int | None, str]:
    """The team id the integer column can hold, and a note for the error text when it cannot."""
    if team_id is None:
        return None, ""
    if isinstance(team_id, int) and not isinstance(team_id, bool) and team_id in _INT4:
        return team_id, ""
    try:
        shown = repr(team_id)[:100]
    except ValueError:  # an integer too long to print
        shown = f"of {type(team_id).__name__}"
    return None, f" (team_id {shown} not storable)"


def _event_json(event: dict[str, Any] | None) -> tuple[str | None, str]:
    """The event as JSON text Postgres' jsonb accepts, or None and the reason it cannot be."""
    if event is None:
        return None, ""
    try:
        text = json.dumps(event, ensure_ascii=False, default=str, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        return None, f" (event not storable as jsonb: {type(exc).__name__}: {exc})"
    if "\\u0000" in text:
        return None, " (event not storable as jsonb: it contains a NUL character)"
    return text, ""


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
        *,
        message_id: bytes | None = None,
    ) -> None:
        # Whatever the message holds, the record must be storable: a dead-letter write that fails
        # on the message's content would keep the message and retry it forever.
        raw_bytes = _raw_bytes(raw)
        team, team_note = _team_column(team_id)
        event_text, event_note = _event_json(event)
        error = _text(error[:MAX_ERROR_CHARS] + team_note + event_note)
        try:
            status = await self._pool.execute(
                _INSERT, _text(stage), error, team, event_text, raw_bytes, message_id
            )
        except Exception as exc:
            if event_text is None or is_outage(exc):
                raise
            # What Postgres' jsonb refuses beyond the checks above (e.g. nesting too deep): keep
            # the raw message and the reason, without the parsed event.
            note = _text(f"{error} (event not storable as jsonb: {exc})"[:MAX_ERROR_CHARS])
            status = await self._pool.execute(_INSERT, _text(stage), note, team, None, raw_bytes, message_id)
        if status.endswith(" 0"):
            log.info("dead letter of a message delivered again skipped", stage=stage)
            return
        DEAD_LETTERS.labels(stage).inc()
