"""Export destinations for Python plugins: `meta.postgres`, `meta.s3` and `meta.bigquery`.

A sandbox has no sockets; these ask the host over the request channel, where the same services
that serve JS plugins' `pg`, `aws-sdk` and `@google-cloud/bigquery` do the work (asyncpg,
aiobotocore, BigQuery's REST API), with the same address policy, timeouts and error messages.
Bytes cross as {"$bytes": base64}.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import Callable
from typing import Any

Request = Callable[[str, list[Any]], "asyncio.Future[Any]"]
_owners = itertools.count(1)


def _wire(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wire(v) for v in value]
    return value


def _unwire(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        return {k: _unwire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwire(v) for v in value]
    return value


class PostgresClient:
    """One connection (or pool) the host holds for this plugin config."""

    def __init__(self, handle: int, request: Request) -> None:
        self._handle = handle
        self._request = request

    async def query(self, text: str, values: list[Any] | None = None) -> dict[str, Any]:
        """{"command", "rowCount", "rows": [dict per row], "fields"}; timestamps as ISO text,
        int8 and numeric as text, as node-postgres gives them."""
        data = await self._request("pg.query", [self._handle, text, _wire(list(values or []))])
        names = [f["name"] for f in data["fields"]]
        rows = [dict(zip(names, _unwire(row), strict=True)) for row in data["rows"]]
        return {**data, "rows": rows}

    async def end(self) -> None:
        await self._request("pg.end", [self._handle])


class Postgres:
    def __init__(self, request: Request) -> None:
        self._request = request
        self._owner = f"py-{next(_owners)}"

    async def connect(self, options: dict[str, Any] | str, *, pool: bool = False) -> PostgresClient:
        """`options` as node-postgres takes them (host, port, user, password, database, ssl,
        connectionString, connectionTimeoutMillis, query_timeout) or a connection string."""
        config = {"connectionString": options} if isinstance(options, str) else dict(options)
        handle = await self._request("pg.connect", [config, "pool" if pool else "client", self._owner])
        return PostgresClient(int(handle), self._request)


class S3:
    """`options`: accessKeyId, secretAccessKey, sessionToken, region, endpoint, s3ForcePathStyle;
    `params`: Bucket, Key, Body (str or bytes), ContentType, ... as the AWS SDK takes them."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def put_object(self, options: dict[str, Any], params: dict[str, Any]) -> asyncio.Future[Any]:
        return self._request("s3.putObject", [dict(options), _wire(dict(params))])

    def upload(self, options: dict[str, Any], params: dict[str, Any]) -> asyncio.Future[Any]:
        return self._request("s3.upload", [dict(options), _wire(dict(params))])


class BigQuery:
    """`options`: credentials (the service-account key as a dict), projectId, apiEndpoint."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def get_table(self, options: dict[str, Any], dataset: str, table: str) -> asyncio.Future[Any]:
        return self._request("bigquery.getTable", [dict(options), dataset, table])

    def create_table(
        self, options: dict[str, Any], dataset: str, table: str, metadata: dict[str, Any]
    ) -> asyncio.Future[Any]:
        return self._request("bigquery.createTable", [dict(options), dataset, table, dict(metadata)])

    def insert(
        self, options: dict[str, Any], dataset: str, table: str, rows: list[dict[str, Any]], **body: Any
    ) -> asyncio.Future[Any]:
        """`rows` are {"insertId", "json"}; `body` may set skipInvalidRows, ignoreUnknownValues.
        The answer's `insertErrors` lists rows BigQuery refused."""
        return self._request("bigquery.insertAll", [dict(options), dataset, table, {**body, "rows": rows}])
