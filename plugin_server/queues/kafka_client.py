"""How every Kafka client of the server connects: brokers, client id, and TLS from the
KAFKA_*_B64 settings (spec/services.md §1.3)."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from typing import Any

from plugin_server.config import Settings
from plugin_server.version import VERSION


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS context when all three certificate settings are given, else None (plaintext).

    The CA is trusted and the client certificate presented, but the broker's host name is
    not checked: managed Kafka clusters (Heroku's) have no stable host names, so the pinned
    CA is what authenticates the broker, as in the original."""
    cert, key, ca = (
        settings.kafka_client_cert_b64,
        settings.kafka_client_cert_key_b64,
        settings.kafka_trusted_cert_b64,
    )
    if not (cert and key and ca):
        return None
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    # Python 3.13 turns on strict X.509 checks by default; the CAs of managed Kafka services
    # are often minimal self-made ones (no key-usage extension) that the original accepted.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cadata=base64.b64decode(ca).decode("ascii"))
    # load_cert_chain reads files only: write the pair to a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="kafka-tls-") as directory:
        cert_path = os.path.join(directory, "client.pem")
        key_path = os.path.join(directory, "client.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(base64.b64decode(data))
        context.load_cert_chain(cert_path, key_path)
    return context


def client_options(settings: Settings, instance_id: str = "") -> dict[str, Any]:
    """Keyword arguments shared by the aiokafka producer and consumer."""
    context = tls_context(settings)
    client_id = f"plugin-server-v{VERSION}-{instance_id}" if instance_id else f"plugin-server-v{VERSION}"
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_brokers,
        "client_id": client_id,
        "request_timeout_ms": 30_000,
        "retry_backoff_ms": 100,
    }
    if context is not None:
        options["security_protocol"] = "SSL"
        options["ssl_context"] = context
    return options
