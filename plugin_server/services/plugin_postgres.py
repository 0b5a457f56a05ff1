"""PostgreSQL for plugins: the work behind the `pg` (node-postgres) facade, done by asyncpg.

A plugin's sandbox cannot open sockets: its `Client`/`Pool` ask the host to connect, query and
end. Every request is checked as untrusted: a handle belongs to the plugin config that opened it
and no other config can use it; a config holds at most `max_handles` at once; the address
policy is fetch's (private, loopback and link-local targets are refused unless
PLUGIN_FETCH_ALLOW_PRIVATE); connects and queries have timeouts.

Parameters cross as node-postgres sends them, as text the server parses (so `'5'` fills an
integer column and an ISO string a timestamp), and results come back as node-postgres parses
them: int2/int4/float/bool/json as values, int8 and numeric as strings, timestamps as ISO text
that the facade turns into Dates. Failures carry node-postgres' messages and `code`s.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from plugin_server.logs import get_logger
from plugin_server.plugins.host_services import PluginContext
from plugin_server.services.destinations import DestinationFailure, count
from plugin_server.services.fetch import address_allowed

log = get_logger(__name__)

DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_QUERY_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_HANDLES = 20

# Sent and read as text, as node-postgres does; the rest keep asyncpg's codecs.
_TEXT_TYPES = (
    "int2", "int4", "int8", "float4", "float8", "numeric", "bool", "json", "jsonb",
    "timestamptz", "timestamp", "date", "time", "timetz", "uuid", "text", "varchar", "bpchar",
    "interval", "inet", "cidr", "oid",
)  # fmt: skip
_INTEGERS = {21, 23, 26}
_FLOATS = {700, 701}
_JSON = {114, 3802}
_TIMESTAMPS = {1114, 1184}
_ARRAY_ELEMENTS = {
    1005: 21, 1007: 23, 1021: 700, 1022: 701, 1000: 16, 199: 114, 3807: 3802, 1115: 1114, 1185: 1184,
}  # fmt: skip


class PostgresFailure(DestinationFailure):
    """A failure as node-postgres reports it: its message, and the error's `code` and fields."""


@dataclass(slots=True)
class _Handle:
    plugin_config_id: int
    owner: str  # the plugin VM that opened it, so a reload's teardown closes only its own
    target: asyncpg.Connection | asyncpg.Pool
    query_timeout: float


class PluginPostgres:
    """The `pg.*` request handlers (register each of `handlers()` on the request channel)."""

    name = "plugin-postgres"

    def __init__(
        self,
        *,
        allow_private: bool = False,
        connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        query_timeout_seconds: float = DEFAULT_QUERY_TIMEOUT_SECONDS,
        max_handles: int = DEFAULT_MAX_HANDLES,
    ) -> None:
        self._allow_private = allow_private
        self._connect_timeout = connect_timeout_seconds
        self._query_timeout = query_timeout_seconds
        self._max_handles = max_handles
        self._handles: dict[int, _Handle] = {}
        self._ids = itertools.count(1)

    def handlers(self) -> dict[str, Any]:
        return {
            "pg.connect": self.connect,
            "pg.query": self.query,
            "pg.end": self.end,
            "pg.release": self.release,
        }

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        for handle_id in list(self._handles):
            await self._close(handle_id)

    # -- requests
    async def connect(
        self, ctx: PluginContext, options: dict[str, Any], kind: str = "client", owner: str = ""
    ) -> int:
        """Open a connection (`kind` "client") or a pool ("pool") for this plugin config."""
        owned = sum(1 for h in self._handles.values() if h.plugin_config_id == ctx.plugin_config_id)
        if owned >= self._max_handles:
            raise PostgresFailure(
                f"Too many open Postgres clients and pools for this plugin (at most {self._max_handles})"
            )
        params = _connect_params(options)
        connect_timeout = _seconds(options.get("connectionTimeoutMillis"), self._connect_timeout)
        query_timeout = _seconds(
            options.get("query_timeout") or options.get("statement_timeout"), self._query_timeout
        )
        host = await self._allowed_host(params["host"], params["port"])
        verified = params["ssl"] is not None and params["ssl"].check_hostname
        if verified:  # the certificate names the host, not the address
            host = params["host"]
        kwargs = {**params, "host": host, "timeout": connect_timeout, "statement_cache_size": 100}
        try:
            if kind == "pool":
                max_size = max(1, min(int(options.get("max") or 10), 10))
                target: asyncpg.Connection | asyncpg.Pool = await asyncio.wait_for(
                    asyncpg.create_pool(**kwargs, min_size=0, max_size=max_size, init=_use_text_codecs),
                    connect_timeout,
                )
            else:
                target = await asyncio.wait_for(asyncpg.connect(**kwargs), connect_timeout)
                await _use_text_codecs(target)
        except BaseException as exc:
            count("postgres", "connect", False)
            raise _as_failure(exc, params) from None
        count("postgres", "connect", True)
        handle_id = next(self._ids)
        self._handles[handle_id] = _Handle(ctx.plugin_config_id, str(owner), target, query_timeout)
        return handle_id

    async def query(
        self, ctx: PluginContext, handle_id: int, text: str, values: list[Any] | None = None
    ) -> dict[str, Any]:
        handle = self._owned(ctx, handle_id)
        args = [_parameter(v) for v in values or []]
        try:
            if isinstance(handle.target, asyncpg.Pool):
                async with handle.target.acquire(timeout=handle.query_timeout) as connection:
                    async with asyncio.timeout(handle.query_timeout):
                        result = await _run(connection, text, args)
            else:
                async with asyncio.timeout(handle.query_timeout):
                    result = await _run(handle.target, text, args)
        except BaseException as exc:
            count("postgres", "query", False)
            raise _as_failure(exc, None) from None
        count("postgres", "query", True)
        return result

    async def end(self, ctx: PluginContext, handle_id: int) -> None:
        self._owned(ctx, handle_id)
        await self._close(handle_id)

    async def release(self, ctx: PluginContext, owner: str = "") -> None:
        """Close everything `owner` (a plugin VM of this config) still holds: it is going away."""
        for handle_id, handle in list(self._handles.items()):
            if handle.plugin_config_id == ctx.plugin_config_id and handle.owner == str(owner):
                await self._close(handle_id)

    # -- helpers
    def _owned(self, ctx: PluginContext, handle_id: Any) -> _Handle:
        handle = self._handles.get(handle_id) if isinstance(handle_id, int) else None
        if handle is None or handle.plugin_config_id != ctx.plugin_config_id:
            raise PostgresFailure("Client was closed and is not queryable")
        return handle

    async def _close(self, handle_id: int) -> None:
        handle = self._handles.pop(handle_id, None)
        if handle is None:
            return
        try:
            await asyncio.wait_for(handle.target.close(), 5)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            handle.target.terminate()

    async def _allowed_host(self, host: str, port: int) -> str:
        """The address to connect to: the host's first address plugins may reach.

        Connecting to the checked address (not the name again) leaves no room for a second DNS
        answer; with TLS verification on, the name is kept so the certificate can be checked."""
        if self._allow_private or host.startswith("/"):
            if host.startswith("/") and not self._allow_private:
                raise PostgresFailure(f"connect EACCES {host}: Unix sockets are private", code="EACCES")
            return host
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise PostgresFailure(f"getaddrinfo ENOTFOUND {host}", code="ENOTFOUND", hostname=host) from None
        addresses = [str(info[4][0]) for info in infos]
        allowed = [a for a in addresses if address_allowed(a)]
        if not allowed:
            raise PostgresFailure(
                f"connect EACCES {addresses[0]}:{port}: plugins may not reach private addresses"
                " (PLUGIN_FETCH_ALLOW_PRIVATE)",
                code="EACCES",
            )
        return allowed[0]


def _connect_params(options: dict[str, Any]) -> dict[str, Any]:
    """node-postgres' client config (or connectionString) as asyncpg's connect arguments."""
    params: dict[str, Any] = {
        "host": "localhost",
        "port": 5432,
        "user": "postgres",
        "password": None,
        "database": None,
        "ssl": None,
    }
    if options.get("connectionString"):
        url = urlsplit(str(options["connectionString"]))
        if url.scheme not in ("postgres", "postgresql"):
            raise PostgresFailure("Invalid connection string: it must start with postgres://")
        params.update(
            host=url.hostname or "localhost",
            port=url.port or 5432,
            user=unquote(url.username) if url.username else "postgres",
            password=unquote(url.password) if url.password else None,
            database=unquote(url.path.lstrip("/")) or None,
        )
        if "sslmode=require" in url.query or "ssl=true" in url.query:
            params["ssl"] = _ssl_context(False)
    for key in ("host", "user", "password", "database"):
        if options.get(key) not in (None, ""):
            params[key] = str(options[key])
    if options.get("port") not in (None, ""):
        params["port"] = int(options["port"])
    ssl_option = options.get("ssl")
    if ssl_option:
        verify = not (isinstance(ssl_option, dict) and ssl_option.get("rejectUnauthorized") is False)
        params["ssl"] = _ssl_context(verify)
    params["database"] = params["database"] or params["user"]
    return params


def _ssl_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:  # node-postgres' `ssl: { rejectUnauthorized: false }`
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _seconds(millis: Any, default: float) -> float:
    try:
        value = float(millis)
    except (TypeError, ValueError):
        return default
    return value / 1000 if value > 0 else default


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


async def _use_text_codecs(connection: asyncpg.Connection) -> None:
    for name in _TEXT_TYPES:
        await connection.set_type_codec(name, schema="pg_catalog", encoder=_text, decoder=str, format="text")


def _parameter(value: Any) -> Any:
    """A JSON parameter as asyncpg takes it; the facade sends Buffers as {"$bytes": base64}."""
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        return base64.b64decode(value["$bytes"])
    return value


async def _run(connection: asyncpg.Connection, text: str, args: list[Any]) -> dict[str, Any]:
    statement = await connection.prepare(text)
    rows = await statement.fetch(*args)
    status = statement.get_statusmsg() or ""
    command, _, count = status.rpartition(" ")
    command = command.split(" ")[0] if command else status
    row_count = int(count) if count.isdigit() else len(rows)
    fields = [{"name": a.name, "dataTypeID": a.type.oid} for a in statement.get_attributes()]
    types = [f["dataTypeID"] for f in fields]
    return {
        "command": command,
        "rowCount": row_count,
        "fields": fields,
        "rows": [[_result_value(v, t) for v, t in zip(row, types, strict=True)] for row in rows],
    }


def _result_value(value: Any, type_oid: int) -> Any:
    """A column value as node-postgres parses it (timestamps as ISO text the facade dates)."""
    if value is None:
        return None
    if isinstance(value, list):
        element = _ARRAY_ELEMENTS.get(type_oid, 25)
        return [_result_value(v, element) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if not isinstance(value, str):
        return str(value)
    if type_oid in _INTEGERS:
        return int(value)
    if type_oid in _FLOATS:
        return float(value)
    if type_oid == 16:
        return value == "t"
    if type_oid in _JSON:
        return json.loads(value)
    if type_oid in _TIMESTAMPS:
        try:
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            return value
    return value


def _as_failure(exc: BaseException, params: dict[str, Any] | None) -> BaseException:
    """An asyncpg or socket failure as node-postgres words it."""
    if isinstance(exc, PostgresFailure):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        data = exc.as_dict()
        return PostgresFailure(
            str(data.get("message") or exc),
            code=data.get("sqlstate"),
            severity=data.get("severity"),
            detail=data.get("detail"),
            hint=data.get("hint"),
            table=data.get("table_name"),
            column=data.get("column_name"),
            constraint=data.get("constraint_name"),
        )
    where = f"{params['host']}:{params['port']}" if params else ""
    if "rejected SSL upgrade" in str(exc):
        return PostgresFailure("The server does not support SSL connections")
    if isinstance(exc, ConnectionRefusedError):
        return PostgresFailure(f"connect ECONNREFUSED {where}", code="ECONNREFUSED", errno=-111)
    if isinstance(exc, TimeoutError):
        if params is not None:
            return PostgresFailure("Connection terminated due to connection timeout")
        return PostgresFailure("Query read timeout")
    if isinstance(exc, (ConnectionResetError, asyncpg.ConnectionDoesNotExistError)):
        return PostgresFailure("Connection terminated unexpectedly")
    if isinstance(exc, (OSError, asyncpg.InterfaceError, ssl.SSLError)):
        return PostgresFailure(str(exc) or type(exc).__name__)
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
        return exc
    log.warning("plugin_postgres_unexpected_error", error=repr(exc))
    return PostgresFailure(str(exc) or type(exc).__name__)
