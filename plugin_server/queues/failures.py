"""Which failures of a batch are worth waiting for (a store or the broker is down) and which are
the events' own (the batch is then retried one event at a time, and an event that fails alone is
dead-lettered): both queue consumers decide the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from plugin_server.db.errors import TookTooLong, is_outage
from plugin_server.ingestion.api import Ingestor
from plugin_server.ingestion.types import IncomingEvent, Outcome
from plugin_server.queues.kafka_producer import KafkaDeliveryError


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for failures of a store or the broker (worth waiting for), not of an event."""
    return isinstance(exc, KafkaDeliveryError) or is_outage(exc)


@asynccontextmanager
async def time_limit(seconds: float | None, what: str) -> AsyncIterator[None]:
    """Like `asyncio.timeout`, but running out raises `TookTooLong` (the work's own fault), so it is
    not mistaken for a store's time-out (an outage)."""
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            yield
    except TimeoutError:
        if limit.expired():
            raise TookTooLong(f"{what} took longer than {seconds:g} s") from None
        raise


async def ingest_alone(
    ingestor: Ingestor,
    event: IncomingEvent,
    sleep: Callable[[float], Awaitable[None]],
    seconds: float | None = None,
) -> Outcome | Exception:
    """Ingest one event, trying twice: its outcome, or the failure of its own (to dead-letter it).
    Infrastructure failures raise: the caller waits and tries again."""
    failure: Exception | None = None
    for attempt in range(2):
        try:
            async with time_limit(seconds, "ingestion"):
                [outcome] = await ingestor.ingest([event])
            return outcome
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            failure = exc
            if attempt == 0:
                await sleep(0.1)
    assert failure is not None
    return failure
