"""Postgres and Redis servers of the fault suite's own, in temporary directories on free ports,
so they can be restarted and killed without touching the machine's shared ones."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.kafka_broker import free_port


def _wait_for_port(port: int, up: bool, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                listening = True
        except OSError:
            listening = False
        if listening == up:
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not go {'up' if up else 'down'} in time")


def postgres_bin() -> Path:
    """The newest Debian PostgreSQL's binaries (initdb, pg_ctl)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


class PostgresCluster:
    """A throw-away cluster (trust auth, user postgres). As root, it runs as the `postgres` user."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.data = directory / "data"
        self._log = directory / "postgres.log"
        self._bin = postgres_bin()
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            account = pwd.getpwnam(self._user)
            os.chown(directory, account.pw_uid, account.pw_gid)

    @property
    def dsn_root(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str) -> None:
        command = [str(self._bin / args[0]), *args[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        # fsync off only spares the disk: a stopped (even crashed) server's writes are still in the
        # OS cache. Commits stay synchronous, so a crash loses no committed transaction.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off "
            "-c full_page_writes=off -c max_connections=50"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self._log), "-o", options, "-w", "start")
        _wait_for_port(self.port, up=True)

    def stop(self, mode: str = "fast") -> None:
        """`fast` (clients disconnected, clean), or `immediate` (as a crash: recovery at start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        _wait_for_port(self.port, up=False)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    directory = Path(tempfile.mkdtemp(prefix="faults-pg-"))
    cluster = PostgresCluster(directory)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


class RedisServer:
    """A redis-server with AOF persistence (`appendfsync always`) in its own directory."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self._dir = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self._dir),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port, up=True)

    def stop(self, how: str = "shutdown") -> None:
        """`shutdown` (SIGTERM: AOF flushed, clean) or `kill` (SIGKILL)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM if how == "shutdown" else signal.SIGKILL)
        self._process.wait(timeout=30)
        self._process = None
        _wait_for_port(self.port, up=False)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="faults-redis-"))
    server = RedisServer(directory)
    try:
        server.start()
        yield server
    finally:
        if server._process is not None:
            server._process.kill()
            server._process.wait()
        shutil.rmtree(directory, ignore_errors=True)
