"""Google BigQuery for plugins: the work behind the `@google-cloud/bigquery` facade (table
getMetadata, setMetadata, create, insert), done with BigQuery's REST API over aiohttp.

The plugin's service-account key signs the OAuth token request (google-auth makes the JWT); the
token is cached until shortly before it expires. Every URL a plugin names (the key's
`token_uri`, the client's `apiEndpoint`) obeys fetch's address policy (private, loopback and
link-local targets are refused unless PLUGIN_FETCH_ALLOW_PRIVATE) and every request has a
timeout. Failures carry the Node library's message, `code` (the HTTP status) and `errors`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import quote

import aiohttp
from google.auth import crypt, jwt

from plugin_server.plugins.host_services import PluginContext
from plugin_server.services.destinations import DestinationFailure, count, private_url_host
from plugin_server.services.fetch import _PublicOnlyResolver

DEFAULT_API_BASE = "https://bigquery.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/bigquery"
_TOKEN_MARGIN_SECONDS = 300


class BigQueryFailure(DestinationFailure):
    """An ApiError of the Node library: message, `code` and `errors`."""


class BigQueryUnreachable(BigQueryFailure):
    """The request did not get an answer: node-fetch's FetchError, as Google's client raises it."""

    js_name = "FetchError"


class PluginBigQuery:
    """The `bigquery.*` request handlers (register each of `handlers()` on the request channel)."""

    name = "plugin-bigquery"

    def __init__(
        self,
        *,
        allow_private: bool = False,
        api_base: str = DEFAULT_API_BASE,
        timeout_seconds: float = 60.0,
    ) -> None:
        self._allow_private = allow_private
        self._api_base = api_base.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, tuple[str, float]] = {}

    def handlers(self) -> dict[str, Any]:
        return {
            "bigquery.getTable": self.get_table,
            "bigquery.patchTable": self.patch_table,
            "bigquery.createTable": self.create_table,
            "bigquery.insertAll": self.insert_all,
        }

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests
    async def get_table(self, ctx: PluginContext, options: dict[str, Any], dataset: str, table: str) -> Any:
        return await self._call(ctx, options, "GET", self._table_path(options, dataset, table))

    async def patch_table(
        self, ctx: PluginContext, options: dict[str, Any], dataset: str, table: str, metadata: dict[str, Any]
    ) -> Any:
        return await self._call(ctx, options, "PATCH", self._table_path(options, dataset, table), metadata)

    async def create_table(
        self, ctx: PluginContext, options: dict[str, Any], dataset: str, table: str, metadata: dict[str, Any]
    ) -> Any:
        project = _project(options)
        body = {**metadata, "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table}}
        path = f"/bigquery/v2/projects/{_segment(project)}/datasets/{_segment(dataset)}/tables"
        return await self._call(ctx, options, "POST", path, body)

    async def insert_all(
        self, ctx: PluginContext, options: dict[str, Any], dataset: str, table: str, body: dict[str, Any]
    ) -> Any:
        path = self._table_path(options, dataset, table) + "/insertAll"
        return await self._call(
            ctx, options, "POST", path, {"kind": "bigquery#tableDataInsertAllRequest", **body}
        )

    # -- helpers
    def _table_path(self, options: dict[str, Any], dataset: str, table: str) -> str:
        project = _project(options)
        return (
            f"/bigquery/v2/projects/{_segment(project)}/datasets/{_segment(dataset)}/tables/{_segment(table)}"
        )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = None if self._allow_private else _PublicOnlyResolver()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=50), trust_env=False
            )
        return self._session

    def _checked(self, url: str) -> str:
        if not url.startswith(("https://", "http://")):
            raise BigQueryFailure(f"Invalid URL: {url}")
        if not self._allow_private and (host := private_url_host(url)) is not None:
            raise BigQueryFailure(
                f"request to {url} refused: {host} is a private address plugins may not reach"
            )
        return url

    def _base(self, options: dict[str, Any]) -> str:
        endpoint = options.get("apiEndpoint")
        if not endpoint:
            return self._api_base
        endpoint = str(endpoint).rstrip("/")
        return endpoint if "://" in endpoint else f"https://{endpoint}"

    async def _call(
        self, ctx: PluginContext, options: dict[str, Any], method: str, path: str, body: Any = None
    ) -> Any:
        try:
            answer = await self._request(ctx, options, method, path, body)
        except BigQueryFailure:
            count("bigquery", method, False)
            raise
        count("bigquery", method, True)
        return answer

    async def _request(
        self, ctx: PluginContext, options: dict[str, Any], method: str, path: str, body: Any
    ) -> Any:
        token = await self._token(ctx, options)
        url = self._checked(self._base(options) + path)
        try:
            async with self._http().request(
                method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=self._timeout
            ) as response:
                data = await response.json(content_type=None) if response.content_length != 0 else None
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            raise BigQueryUnreachable(f"request to {url} failed, reason: {reason}") from None
        if status >= 400:
            error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
            raise BigQueryFailure(
                str(error.get("message") or f"HTTP {status}"), code=status, errors=error.get("errors") or []
            )
        return data

    async def _token(self, ctx: PluginContext, options: dict[str, Any]) -> str:
        """An OAuth access token for the plugin's service account (cached per config and key)."""
        credentials = options.get("credentials") or {}
        email, key = credentials.get("client_email"), credentials.get("private_key")
        if not email or not key:
            raise BigQueryFailure("The incoming JSON object does not contain a client_email field")
        token_uri = self._checked(str(credentials.get("token_uri") or "https://oauth2.googleapis.com/token"))
        identity = hashlib.sha256(f"{ctx.plugin_config_id}\0{email}\0{key}\0{token_uri}".encode()).hexdigest()
        cached = self._tokens.get(identity)
        now = time.time()
        if cached is not None and cached[1] > now + _TOKEN_MARGIN_SECONDS:
            return cached[0]
        try:
            signer = crypt.RSASigner.from_service_account_info(
                {
                    "private_key": key,
                    "private_key_id": credentials.get("private_key_id"),
                    "client_email": email,
                }
            )
        except (ValueError, TypeError) as exc:
            raise BigQueryFailure(f"error:1E08010C:DECODER routines::unsupported ({exc})") from None
        claims = {"iss": email, "scope": SCOPE, "aud": token_uri, "iat": int(now), "exp": int(now) + 3600}
        assertion = jwt.encode(signer, claims).decode()
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
        try:
            async with self._http().post(token_uri, data=form, timeout=self._timeout) as response:
                data = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BigQueryUnreachable(
                f"request to {token_uri} failed, reason: {exc or type(exc).__name__}"
            ) from None
        if status >= 400 or not isinstance(data, dict) or "access_token" not in data:
            reason = data if isinstance(data, dict) else {}
            message = (
                f"{reason.get('error', 'token request failed')}: {reason.get('error_description', status)}"
            )
            raise BigQueryFailure(message, code=status)
        self._tokens[identity] = (str(data["access_token"]), now + float(data.get("expires_in", 3600)))
        return str(data["access_token"])


def _project(options: dict[str, Any]) -> str:
    project = options.get("projectId") or (options.get("credentials") or {}).get("project_id")
    if not project:
        raise BigQueryFailure("Sorry, we cannot connect to Cloud Services without a project ID.")
    return str(project)


def _segment(value: str) -> str:
    return quote(str(value), safe="")
