"""Starts a ClickHouse server (Debian's `clickhouse-server`, installed by scripts/ensure-services.sh)
as a plain process with a config of its own: loopback only, free ports, data in a temporary
folder. Its native-protocol port is what the service's ClickHouse reads use."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.kafka_broker import free_port

CANDIDATES = ("clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server")
INSTALL_HINT = (
    "no clickhouse-server binary: `apt-get install -y clickhouse-server` "
    "(scripts/ensure-services.sh, run by `make test` and .ci/run, installs it)"
)

# `<yandex>` is the root element the 18.x releases Debian ships read (later ones read both)
CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/error.log</errorlog></logger>
    <tcp_port>{tcp_port}</tcp_port>{tls}
    <http_port>{http_port}</http_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{root}/data/</path>
    <tmp_path>{root}/tmp/</tmp_path>
    <user_files_path>{root}/user_files/</user_files_path>
    <format_schema_path>{root}/format_schemas/</format_schema_path>
    <users_config>{root}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
</yandex>
"""
TLS = """
    <tcp_port_secure>{port}</tcp_port_secure>
    <openSSL><server>
        <certificateFile>{certificate}</certificateFile>
        <privateKeyFile>{key}</privateKeyFile>
        <verificationMode>none</verificationMode>
        <loadDefaultCAFile>false</loadDefaultCAFile>
        <disableProtocols>sslv2,sslv3</disableProtocols>
    </server></openSSL>"""
USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default></default></quotas>
</yandex>
"""


def clickhouse_binary() -> str:
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError(INSTALL_HINT)


@dataclass(frozen=True, slots=True)
class ClickHouseAddresses:
    plain: str  # 127.0.0.1:<native port>
    tls: str | None  # 127.0.0.1:<native TLS port>, when a certificate was given


@contextlib.contextmanager
def clickhouse_server(
    timeout: float = 60.0, *, certificate: tuple[Path, Path] | None = None
) -> Iterator[ClickHouseAddresses]:
    """A running server (with a TLS port too when given a certificate and its key); stops it and
    removes its data afterwards."""
    binary = clickhouse_binary()
    with tempfile.TemporaryDirectory(prefix="clickhouse-") as folder:
        root = Path(folder)
        tcp_port, http_port, tls_port = free_port(), free_port(), free_port()
        tls = ""
        if certificate is not None:
            tls = TLS.format(port=tls_port, certificate=certificate[0], key=certificate[1])
        (root / "users.xml").write_text(USERS)
        config = root / "config.xml"
        config.write_text(CONFIG.format(root=root, tcp_port=tcp_port, http_port=http_port, tls=tls))
        process = subprocess.Popen(
            [binary, f"--config-file={config}"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    errors = (root / "error.log").read_text() if (root / "error.log").exists() else ""
                    code = process.returncode
                    raise RuntimeError(f"clickhouse-server exited with {code}: {errors[-2000:]}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", tcp_port), timeout=0.5),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("clickhouse-server did not start listening in time")
                time.sleep(0.1)
            yield ClickHouseAddresses(
                f"127.0.0.1:{tcp_port}", f"127.0.0.1:{tls_port}" if certificate is not None else None
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
