import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from plugin_server.testing import PluginCallFailed, PluginLoadFailed, load_plugin, make_event

HERE = Path(__file__).parent


class Endpoint:
    """A local HTTP server that records the batches it receives and answers `status`."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[tuple[dict[str, str], Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests.append((dict(self.headers), json.loads(body)))
                self.send_response(endpoint.status)
                self.end_headers()
                self.wfile.write(b"bad batch" if endpoint.status == 400 else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()
    thread.join()


def load(url: str, **config: str) -> Any:
    # the endpoint is on 127.0.0.1, which plugins may reach only when allowed (as on a server
    # with PLUGIN_FETCH_ALLOW_PRIVATE)
    return load_plugin(HERE, {"url": url, **config}, allow_private_fetch=True)


def test_a_batch_is_posted_as_json_with_the_api_key(endpoint: Endpoint) -> None:
    events = [make_event("signed up", properties={"plan": "pro"}), make_event("$pageview")]
    with load(endpoint.url, api_key="secret") as plugin:
        plugin.export_events(events)
        assert plugin.metrics == {"events_exported": 2}
    [(headers, body)] = endpoint.requests
    assert headers["Authorization"] == "Bearer secret"
    assert headers["Content-Type"] == "application/json"
    assert [e["event"] for e in body["batch"]] == ["signed up", "$pageview"]
    assert body["batch"][0]["properties"] == {"plan": "pro"}
    assert body["batch"][0]["uuid"] == events[0]["uuid"]


def test_a_server_error_raises_retry_error_so_the_batch_is_retried(endpoint: Endpoint) -> None:
    endpoint.status = 503
    with load(endpoint.url) as plugin:
        with pytest.raises(PluginCallFailed) as failure:
            plugin.export_events([make_event()])
        assert failure.value.retry
        assert "503" in str(failure.value)
        assert plugin.metrics == {"batches_failed": 1}


def test_an_unreachable_endpoint_raises_retry_error(endpoint: Endpoint) -> None:
    url = endpoint.url
    endpoint.server.shutdown()
    endpoint.server.server_close()
    with load(url) as plugin:
        with pytest.raises(PluginCallFailed) as failure:
            plugin.export_events([make_event()])
    assert failure.value.retry
    assert "Could not reach the endpoint" in str(failure.value)


def test_a_refused_batch_is_logged_and_not_retried(endpoint: Endpoint) -> None:
    endpoint.status = 400
    with load(endpoint.url) as plugin:
        plugin.export_events([make_event()])
        assert plugin.logs == [("ERROR", "The endpoint refused 1 events (400): bad batch")]


def test_a_url_that_is_not_http_keeps_the_plugin_from_loading() -> None:
    with pytest.raises(PluginLoadFailed, match="must start with https://"):
        with load("ftp://example.com"):
            pass


def test_private_addresses_are_refused_unless_allowed(endpoint: Endpoint) -> None:
    with load_plugin(HERE, {"url": endpoint.url}) as plugin:
        with pytest.raises(PluginCallFailed) as failure:
            plugin.export_events([make_event()])
    assert "may not reach" in str(failure.value)
    assert endpoint.requests == []
