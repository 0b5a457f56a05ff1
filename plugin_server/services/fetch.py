"""`fetch` for plugins (plugins §4.9.4, §7.3), run by the host's aiohttp client.

Every request has a timeout and a response size limit. Unless PLUGIN_FETCH_ALLOW_PRIVATE is
set, a plugin cannot reach private, loopback, link-local or otherwise non-global addresses:
the addresses a host name resolves to are checked where the connection is made (so DNS tricks
do not help), IP literals are checked before, and redirects are followed one by one, each
checked again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from prometheus_client import Counter

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_REDIRECTS = 10
_REDIRECTS = {301, 302, 303, 307, 308}

FETCHES = Counter(
    "plugin_server_plugin_fetches_total",
    "HTTP requests made for plugins, by outcome",
    ["outcome"],
    registry=REGISTRY,
)

log = get_logger(__name__)


class FetchError(Exception):
    """A plugin's request could not be made or completed."""


class FetchRefused(FetchError):
    """The request would reach an address plugins may not reach."""


@dataclass(slots=True)
class FetchResponse:
    status: int
    status_text: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def as_plain(self) -> tuple[int, str, str, tuple[tuple[str, str], ...], bytes]:
        """What crosses the sandbox boundary."""
        return (self.status, self.status_text, self.url, tuple(self.headers.items()), self.body)


def address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _PublicOnlyResolver(AbstractResolver):
    """Resolves with the system resolver, then keeps only public addresses."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if address_allowed(r["host"])]
        if not allowed:
            raise FetchRefused(f"{host} resolves to an address plugins may not reach")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class PluginFetch:
    name = "plugin-fetch"

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._allow_private = allow_private
        self._timeout = timeout_seconds
        self._max_body = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        resolver = None if self._allow_private else _PublicOnlyResolver()
        connector = aiohttp.TCPConnector(resolver=resolver, limit=100, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=True, raise_for_status=False
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _check_url(self, url: str) -> None:
        parsed = aiohttp.client.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise FetchError(f"only http and https URLs can be fetched, not {url!r}")
        if self._allow_private:
            return
        try:
            literal = ipaddress.ip_address(parsed.host.strip("[]"))
        except ValueError:
            return  # a name: checked on resolution
        if not address_allowed(str(literal)):
            raise FetchRefused(f"{parsed.host} is an address plugins may not reach")

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        time_limit: float | None = None,
        follow_redirects: bool = True,
    ) -> FetchResponse:
        if self._session is None:
            raise FetchError("fetch is not started")
        budget = aiohttp.ClientTimeout(total=min(time_limit or self._timeout, self._timeout))
        method = method.upper()
        data: bytes | None = body.encode() if isinstance(body, str) else body
        try:
            for _ in range(MAX_REDIRECTS + 1):
                self._check_url(url)
                async with self._session.request(
                    method, url, headers=dict(headers or {}), data=data, timeout=budget, allow_redirects=False
                ) as response:
                    location = response.headers.get("Location")
                    if follow_redirects and response.status in _REDIRECTS and location:
                        url = urljoin(str(response.url), location)
                        if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                            method, data = "GET", None
                        continue
                    content = await self._read_limited(response)
                    FETCHES.labels("ok").inc()
                    return FetchResponse(
                        status=response.status,
                        status_text=response.reason or "",
                        url=str(response.url),
                        headers={k.lower(): v for k, v in response.headers.items()},
                        body=content,
                    )
            raise FetchError(f"more than {MAX_REDIRECTS} redirects")
        except FetchRefused:
            FETCHES.labels("refused").inc()
            raise
        except aiohttp.ClientConnectorError as exc:
            refused = _refusal_in(exc)
            FETCHES.labels("refused" if refused else "error").inc()
            if refused is not None:
                raise refused from None
            raise FetchError(f"request to {url} failed: {exc}") from None
        except TimeoutError:
            FETCHES.labels("timeout").inc()
            raise FetchError(f"request to {url} timed out") from None
        except aiohttp.ClientError as exc:
            FETCHES.labels("error").inc()
            raise FetchError(f"request to {url} failed: {exc}") from None

    async def _read_limited(self, response: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > self._max_body:
                FETCHES.labels("too_large").inc()
                raise FetchError(f"response larger than {self._max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _refusal_in(exc: BaseException) -> FetchRefused | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FetchRefused):
            return seen
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "os_error", None)
        if seen is exc:
            return None
    return None


def plain_headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k): str(v) for k, v in items}
