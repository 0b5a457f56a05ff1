"""`fetch` for plugins against a local HTTP server (plugins §4.9.4, §7.6)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from plugin_server.services.fetch import FetchError, FetchRefused, PluginFetch, address_allowed
from tests.services.http_server import LocalServer, local_server


async def handler(request: web.Request) -> web.StreamResponse:
    if request.path == "/slow":
        await asyncio.sleep(2)
    if request.path == "/big":
        return web.Response(body=b"x" * 5000)
    if request.path == "/redirect":
        raise web.HTTPFound("/json")
    if request.path == "/json":
        return web.json_response({"method": request.method, "echo": (await request.text())})
    return web.Response(text="hello", headers={"X-Thing": "1"})


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    async with local_server(handler) as running:
        yield running


async def started(**kwargs: object) -> PluginFetch:
    fetch = PluginFetch(**kwargs)  # type: ignore[arg-type]
    await fetch.start()
    return fetch


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/",
        "http://10.1.2.3/",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
async def test_private_addresses_are_refused_by_default(url: str) -> None:
    fetch = await started()
    try:
        with pytest.raises(FetchRefused):
            await fetch.fetch(url)
    finally:
        await fetch.stop()


async def test_names_resolving_to_private_addresses_are_refused(server: LocalServer) -> None:
    fetch = await started()
    try:
        with pytest.raises(FetchRefused):
            await fetch.fetch(server.url.replace("127.0.0.1", "localhost"))
    finally:
        await fetch.stop()
    assert server.requests == []


async def test_allowed_when_setting_allows_private(server: LocalServer) -> None:
    fetch = await started(allow_private=True)
    try:
        response = await fetch.fetch(server.url + "/hello", headers={"A": "b"})
        assert (response.status, response.ok, response.body) == (200, True, b"hello")
        assert response.headers["x-thing"] == "1"
        posted = await fetch.fetch(server.url + "/json", method="POST", body='{"a":1}')
        assert posted.body == b'{"method": "POST", "echo": "{\\"a\\":1}"}'
        followed = await fetch.fetch(server.url + "/redirect")
        assert followed.url.endswith("/json") and followed.status == 200
    finally:
        await fetch.stop()


async def test_timeout_and_size_limit(server: LocalServer) -> None:
    fetch = await started(allow_private=True, max_body_bytes=1000, timeout_seconds=0.5)
    try:
        with pytest.raises(FetchError, match="timed out"):
            await fetch.fetch(server.url + "/slow")
        with pytest.raises(FetchError, match="larger than 1000 bytes"):
            await fetch.fetch(server.url + "/big")
        assert (await fetch.fetch(server.url + "/")).body == b"hello"  # the next request flows
    finally:
        await fetch.stop()


async def test_only_http_urls() -> None:
    fetch = await started(allow_private=True)
    try:
        with pytest.raises(FetchError, match="only http and https"):
            await fetch.fetch("file:///etc/passwd")
    finally:
        await fetch.stop()


def test_address_classes() -> None:
    assert address_allowed("93.184.216.34")
    assert address_allowed("2606:2800:220:1:248:1893:25c8:1946")
    for private in ("127.0.0.1", "10.0.0.1", "172.16.5.4", "169.254.1.1", "fe80::1", "fc00::1", "100.64.0.1"):
        assert not address_allowed(private), private
