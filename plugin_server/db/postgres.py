"""The asyncpg connection pool, with JSON columns decoded to Python values."""

from __future__ import annotations

import ssl
from typing import Any

import asyncpg
import msgspec

from plugin_server.ingestion.js import encode_js_float

_encoder = msgspec.json.Encoder(enc_hook=encode_js_float)


def _encode_json(value: Any) -> str:
    return _encoder.encode(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, schema="pg_catalog", encoder=_encode_json, decoder=msgspec.json.decode, format="text"
        )


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, heroku_tls: bool = False
) -> asyncpg.Pool:
    """A pool whose connections read and write json/jsonb columns as Python objects."""
    kwargs: dict[str, Any] = {}
    if heroku_tls:
        # DYNO set: Heroku Postgres wants TLS but presents no verifiable certificate.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        kwargs["ssl"] = context
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=init_connection, command_timeout=60, **kwargs
    )
    assert pool is not None
    return pool
