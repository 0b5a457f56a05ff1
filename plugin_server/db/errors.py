"""Which errors of Postgres, Redis or the Kafka client mean the service is unreachable (an outage:
wait and try again) rather than that some data was refused (the data's fault: never retry it).

Shared by the ingestion pipeline (which refreshes its connections after an outage) and the queue
consumers (which pause and retry a batch only for an outage)."""

from __future__ import annotations

import asyncpg
import redis.exceptions
from asyncpg.exceptions import _base as asyncpg_base

# Server-side states that end or refuse a connection: the server is restarting or going away.
_POSTGRES_OUTAGES: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExist, ConnectionFailure, ProtocolViolation, ...
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.QueryCanceledError,  # statement_timeout or a cancel during shutdown
    asyncpg.InsufficientResourcesError,  # disk full, out of memory
    asyncpg.ReadOnlySQLTransactionError,  # a failover's standby
)


# redis-py's own ConnectionError and TimeoutError are not the builtins; LOADING: restarting from AOF.
_REDIS_OUTAGES: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


def is_postgres_outage(exc: BaseException) -> bool:
    """The Postgres server or the connection to it failed (not the data sent)."""
    if isinstance(exc, asyncpg_base.DataError):
        return False  # the client could not encode an argument: the data's fault
    if isinstance(exc, _POSTGRES_OUTAGES):
        return True
    # The client's own state: a connection closed or lost mid-operation ("cannot switch to state
    # 15; another operation is in progress" after a reset), the pool closing.
    return isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError)


def is_outage(exc: BaseException) -> bool:
    """True for failures of a store or the broker (worth waiting for), never for one message's data.

    Timeouts count: a store too slow to answer is an outage. (A consumer's own time limit on a
    batch raises `TookTooLong`, which is not a TimeoutError.)"""
    if isinstance(exc, ConnectionError | OSError | TimeoutError):  # TimeoutError: asyncpg, asyncio
        return True
    if is_postgres_outage(exc):
        return True
    if isinstance(exc, _REDIS_OUTAGES):
        return True
    return (type(exc).__module__ or "").startswith("aiokafka")


class TookTooLong(Exception):
    """A batch or event exceeded the consumer's own time limit: its events' fault, not an outage."""
