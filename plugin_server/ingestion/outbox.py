"""Messages a Postgres transaction publishes once it has committed.

In Kafka mode the person writes (create, add distinct id, update, merge) and the events
themselves have ClickHouse copies on Kafka topics (spec/ingestion.md §2.8.3, §3.3). The code
making those writes calls `emit` inside the transaction; the pipeline opens a collection for the
transaction with `collect()` and hands the messages to the producer only after COMMIT, so a
rolled-back write never reaches ClickHouse. A savepoint that is rolled back and survived drops
what was emitted inside it (`savepoint()`). With no collection open (Postgres mode) `emit` does
nothing and `active()` is False, so callers can skip building messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_messages: ContextVar[list[Any] | None] = ContextVar("outbox_messages", default=None)


def active() -> bool:
    return _messages.get() is not None


def emit(*messages: Any) -> None:
    collected = _messages.get()
    if collected is not None:
        collected.extend(messages)


@contextlib.contextmanager
def collect(enabled: bool = True) -> Iterator[list[Any]]:
    """Collect what is emitted in this block (the caller publishes it after COMMIT)."""
    collected: list[Any] = []
    if not enabled:
        yield collected
        return
    token = _messages.set(collected)
    try:
        yield collected
    finally:
        _messages.reset(token)


@contextlib.contextmanager
def savepoint() -> Iterator[None]:
    """Wrap a savepoint whose failure the caller survives: its messages are dropped with it."""
    collected = _messages.get()
    mark = len(collected) if collected is not None else 0
    try:
        yield
    except BaseException:
        if collected is not None:
            del collected[mark:]
        raise
