"""Which failures of a batch are worth waiting for (a store or the broker is down) and which are
the events' own (the batch is then retried one event at a time, and an event that fails alone is
dead-lettered): both queue consumers decide the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from plugin_server.ingestion.api import Ingestor
from plugin_server.ingestion.types import IncomingEvent, Outcome
from plugin_server.queues.kafka_producer import KafkaDeliveryError


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for failures of a store or the broker (worth waiting for), not of an event."""
    if isinstance(exc, TimeoutError):
        return False  # our own batch time-out (TimeoutError is an OSError): an event's fault
    if isinstance(exc, ConnectionError | OSError | KafkaDeliveryError):
        return True
    module = type(exc).__module__ or ""
    name = type(exc).__name__
    if module.startswith("asyncpg"):
        return (
            name
            in {
                "ConnectionDoesNotExistError",
                "ConnectionFailureError",
                "CannotConnectNowError",
                "TooManyConnectionsError",
                "InterfaceError",
                "PostgresConnectionError",
                "AdminShutdownError",
                "CrashShutdownError",
            }
            or "Connection" in name
        )
    if module.startswith("redis"):
        return name in {"ConnectionError", "TimeoutError", "BusyLoadingError"}
    if module.startswith("aiokafka"):
        return True
    return False


async def ingest_alone(
    ingestor: Ingestor,
    event: IncomingEvent,
    sleep: Callable[[float], Awaitable[None]],
    time_limit: float | None = None,
) -> Outcome | Exception:
    """Ingest one event, trying twice: its outcome, or the failure of its own (to dead-letter it).
    Infrastructure failures raise: the caller waits and tries again."""
    failure: Exception | None = None
    for attempt in range(2):
        try:
            async with asyncio.timeout(time_limit):
                [outcome] = await ingestor.ingest([event])
            return outcome
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            failure = exc
            if attempt == 0:
                await sleep(0.1)
    assert failure is not None
    if isinstance(failure, TimeoutError) and time_limit is not None:
        failure = TimeoutError(f"ingestion took longer than {time_limit:g} s")
    return failure
