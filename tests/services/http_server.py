"""A local aiohttp server for tests: records requests and answers with a given handler."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class LocalServer:
    url: str
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def local_server(handler: Handler) -> AsyncIterator[LocalServer]:
    server = LocalServer(url="")

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        server.requests.append((request.method, str(request.rel_url), dict(request.headers), body))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()
