"""Outage or bad data: the errors real Postgres and Redis raise are told apart, so only outages
are retried and a message's own failure is dead-lettered at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as aioredis

from plugin_server.db.errors import TookTooLong
from plugin_server.queues.failures import is_infrastructure_error, time_limit


async def _error_of(coro: object) -> BaseException:
    try:
        await coro  # type: ignore[misc]
    except BaseException as exc:
        return exc
    raise AssertionError("no error raised")


async def test_a_backend_terminated_by_the_server_is_an_outage(pg_dsn: str) -> None:
    victim = await asyncpg.connect(pg_dsn)
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", victim.get_server_pid())
        error = await _error_of(victim.fetchval("SELECT 1"))
        assert is_infrastructure_error(error), repr(error)
        # the next use of that connection fails otherwise, and is an outage too
        assert is_infrastructure_error(await _error_of(victim.fetchval("SELECT 1")))
    finally:
        victim.terminate()
        await admin.close()


async def test_refused_connections_are_outages() -> None:
    assert is_infrastructure_error(await _error_of(asyncpg.connect("postgres://postgres@127.0.0.1:1/x")))
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    try:
        assert is_infrastructure_error(await _error_of(client.ping()))
    finally:
        await client.aclose()


async def test_client_state_errors_after_a_lost_connection_are_outages() -> None:
    # What asyncpg raises when a COMMIT meets a connection reset mid-operation.
    error = asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress")
    assert is_infrastructure_error(error)
    assert is_infrastructure_error(asyncpg.InterfaceError("connection is closed"))


async def test_a_server_timeout_is_an_outage(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        error = await _error_of(conn.fetchval("SELECT pg_sleep(5)", timeout=0.2))
    finally:
        conn.terminate()
    assert isinstance(error, TimeoutError)
    assert is_infrastructure_error(error)


@pytest.mark.parametrize(
    ("sql", "argument"),
    [
        ("SELECT $1::int", 2**70),
        ("SELECT $1::bigint", 2**63),
        ("SELECT $1::text", "lone \ud800"),
        ("SELECT $1::text", "nul \x00"),
        ("SELECT $1::text::jsonb", '"\\u0000"'),
        ("SELECT $1::text::int", "12x"),
        ("SELECT repeat('x', 1100000000) || $1", "too long"),
        ("SELECT $1::text::timestamptz", "99999-01-01"),
    ],
)
async def test_data_postgres_refuses_is_not_an_outage(pg: asyncpg.Pool, sql: str, argument: object) -> None:
    error = await _error_of(pg.fetchval(sql, argument))
    assert not is_infrastructure_error(error), repr(error)


async def test_the_consumers_own_time_limit_is_the_works_fault_not_an_outage() -> None:
    with pytest.raises(TookTooLong) as caught:
        async with time_limit(0.01, "the batch"):
            await asyncio.Event().wait()
    assert not is_infrastructure_error(caught.value)
    assert str(caught.value) == "the batch took longer than 0.01 s"
    # a timeout raised inside (a store's) passes through as the outage it is
    with pytest.raises(TimeoutError):
        async with time_limit(10, "the batch"):
            raise TimeoutError
