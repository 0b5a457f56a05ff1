"""TLS to Kafka from the KAFKA_*_B64 settings (spec/ingestion.md §0.3): the trusted CA is
checked, the client certificate is presented, the broker's host name is not checked. Real TLS
handshakes against a local TLS server with certificates made by openssl."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from plugin_server.config import load_settings
from plugin_server.queues.kafka_client import client_options, tls_context

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(cwd: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=cwd,
    )  # fmt: skip


def _signed(cwd: Path, name: str, ca: str) -> None:
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", cwd=cwd,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("tls")
    _ca(cwd, "trusted-ca")
    _ca(cwd, "other-ca")
    _signed(cwd, "broker-somewhere-else", "trusted-ca")  # a name that is not 127.0.0.1
    _signed(cwd, "impostor", "other-ca")
    _signed(cwd, "client", "trusted-ca")
    return cwd


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _settings(certs: Path) -> dict[str, str]:
    return {
        "kafka_client_cert_b64": _b64(certs / "client.pem"),
        "kafka_client_cert_key_b64": _b64(certs / "client.key"),
        "kafka_trusted_cert_b64": _b64(certs / "trusted-ca.pem"),
    }


async def _handshake(certs: Path, server_name: str, client: ssl.SSLContext) -> str:
    """Connect to a TLS server that requires a client certificate; returns the client
    certificate's common name as the server saw it."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certs / f"{server_name}.pem", certs / f"{server_name}.key")
    server_context.load_verify_locations(certs / "trusted-ca.pem")
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.verify_flags &= ~ssl.VERIFY_X509_STRICT  # openssl's quick CA is not strict
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        seen.extend(value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName")
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        assert await reader.read(2) == b"ok"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    return seen[0]


async def test_tls_trusts_the_ca_presents_the_client_certificate_and_ignores_the_host_name(
    certs: Path,
) -> None:
    settings = load_settings({}, database_url="postgres://unused", **_settings(certs))
    context = tls_context(settings)
    assert context is not None
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED
    assert await _handshake(certs, "broker-somewhere-else", context) == "client"


async def test_tls_refuses_a_broker_certificate_from_another_ca(certs: Path) -> None:
    settings = load_settings({}, database_url="postgres://unused", **_settings(certs))
    context = tls_context(settings)
    assert context is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(certs, "impostor", context)


def test_tls_needs_all_three_settings(certs: Path) -> None:
    partial = _settings(certs)
    del partial["kafka_trusted_cert_b64"]
    settings = load_settings({}, database_url="postgres://unused", kafka_hosts="a:9092,b:9092", **partial)
    assert tls_context(settings) is None
    options = client_options(settings, "instance-1")
    assert "security_protocol" not in options
    assert options["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert options["client_id"] == "plugin-server-v1.10.5-instance-1"
    full = load_settings({}, database_url="postgres://unused", **_settings(certs))
    assert client_options(full)["security_protocol"] == "SSL"
