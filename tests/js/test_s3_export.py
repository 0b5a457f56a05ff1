"""The `aws-sdk` facade's S3 against moto's S3 server (started here on a loopback port): an export
plugin in the style of PostHog's S3 export plugin, callbacks and promises, errors, policies."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiobotocore.session import AioSession

from plugin_server.plugins.host_services import PluginContext
from plugin_server.plugins.runner import PluginRunner
from plugin_server.services.plugin_s3 import AwsFailure, PluginS3
from tests.js.conftest import Loader

KEYS = {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "secret-example"}

EXPORT_PLUGIN = """
import { S3 } from 'aws-sdk'
import { gzipSync } from 'zlib'
import { randomUUID } from 'crypto'

export function setupPlugin({ global, config }) {
    global.s3 = new S3({
        accessKeyId: config.awsAccessKey, secretAccessKey: config.awsSecretAccessKey,
        region: config.awsRegion, endpoint: config.s3Endpoint, s3ForcePathStyle: true,
    })
}

export async function exportEvents(events, { global, config }) {
    const body = gzipSync(events.map(e => JSON.stringify(e)).join('\\n'))
    const key = `${config.prefix}${new Date().toISOString().slice(0, 10)}/${randomUUID()}.jsonl.gz`
    await new Promise((resolve, reject) => {
        global.s3.upload({ Bucket: config.s3BucketName, Key: key, Body: body, ContentType: 'application/gzip' },
            (err, data) => err ? reject(err) : resolve(data))
    })
    const marker = await global.s3.putObject({ Bucket: config.s3BucketName, Key: config.prefix + 'last',
                                               Body: key }).promise()
    return marker
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):  # up to 60 s on a busy machine
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("moto server exited") from None
                time.sleep(0.1)
        else:
            raise RuntimeError("moto server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
async def bucket(moto_endpoint: str) -> AsyncIterator[Any]:
    """A fresh bucket and an S3 client to read it."""
    session = AioSession()
    async with session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_endpoint,
        aws_access_key_id=KEYS["accessKeyId"],
        aws_secret_access_key=KEYS["secretAccessKey"],
    ) as client:
        name = f"exports-{free_port()}"
        await client.create_bucket(Bucket=name)
        client.bucket_name = name
        yield client


@pytest.fixture
async def s3_service(runner: PluginRunner) -> AsyncIterator[PluginS3]:
    service = PluginS3(allow_private=True)  # moto listens on loopback
    for name, handler in service.handlers().items():
        runner.services.register(name, handler)
    yield service
    await service.stop()


async def read(client: Any, key: str) -> bytes:
    answer = await client.get_object(Bucket=client.bucket_name, Key=key)
    async with answer["Body"] as body:
        return bytes(await body.read())


async def test_export_plugin_uploads_gzipped_batches(
    load_plugin: Loader, s3_service: PluginS3, bucket: Any, moto_endpoint: str
) -> None:
    config = {
        "awsAccessKey": KEYS["accessKeyId"],
        "awsSecretAccessKey": KEYS["secretAccessKey"],
        "awsRegion": "us-east-1",
        "s3Endpoint": moto_endpoint,
        "s3BucketName": bucket.bucket_name,
        "prefix": "posthog/",
    }
    plugin = await load_plugin(EXPORT_PLUGIN, config=config)
    events = [{"event": "$pageview", "distinct_id": f"u{i}", "properties": {"i": i}} for i in range(40)]
    outcome = await plugin.call("export_events", events)
    assert outcome.ok, outcome.error
    assert outcome.value["ETag"].startswith('"')
    key = (await read(bucket, "posthog/last")).decode()
    assert key.startswith("posthog/") and key.endswith(".jsonl.gz")
    lines = gzip.decompress(await read(bucket, key)).decode().split("\n")
    assert [json.loads(line) for line in lines] == events
    head = await bucket.head_object(Bucket=bucket.bucket_name, Key=key)
    assert head["ContentType"] == "application/gzip"


async def test_upload_answers_and_errors_are_the_sdks(
    make_vm: Loader, s3_service: PluginS3, bucket: Any, moto_endpoint: str
) -> None:
    vm = await make_vm("""
        const AWS = require('aws-sdk')
        export async function processEvent(arg) {
            AWS.config.update({ accessKeyId: arg.keys.accessKeyId, secretAccessKey: arg.keys.secretAccessKey,
                                region: 'us-east-1' })
            const s3 = new AWS.S3({ endpoint: new AWS.Endpoint(arg.endpoint), s3ForcePathStyle: true })
            const uploaded = await s3.upload({ Bucket: arg.bucket, Key: 'a b/ç.txt', Body: Buffer.from('hello') }).promise()
            const errors = []
            try { await s3.putObject({ Bucket: 'no-such-bucket-here', Key: 'k', Body: 'x' }).promise() }
            catch (e) { errors.push([e.code, e.statusCode, e.message]) }
            const viaCallback = await new Promise(resolve =>
                new AWS.S3({ accessKeyId: '', secretAccessKey: '' }).putObject({ Bucket: 'b', Key: 'k' },
                    (err) => resolve([err.code, err.message])))
            return { uploaded, errors, viaCallback }
        }
    """)
    got = await vm.call_method(
        "processEvent",
        {"keys": KEYS, "endpoint": moto_endpoint, "bucket": bucket.bucket_name},
    )
    assert got["uploaded"]["Location"] == f"{moto_endpoint}/{bucket.bucket_name}/a%20b/%C3%A7.txt"
    assert got["uploaded"]["Key"] == "a b/ç.txt" and got["uploaded"]["Bucket"] == bucket.bucket_name
    assert got["errors"] == [["NoSuchBucket", 404, "The specified bucket does not exist"]]
    assert got["viaCallback"] == ["CredentialsError", "Missing credentials in config"]
    assert await read(bucket, "a b/ç.txt") == b"hello"


async def test_private_endpoints_are_refused_by_default(moto_endpoint: str) -> None:
    service = PluginS3()
    ctx = PluginContext(plugin_config_id=1, plugin_id=1, team_id=2, plugin_name="s3")
    try:
        with pytest.raises(AwsFailure, match=r"127\.0\.0\.1 is a private address plugins may not reach"):
            await service.put_object(ctx, {**KEYS, "endpoint": moto_endpoint}, {"Bucket": "b", "Key": "k"})
        with pytest.raises(AwsFailure, match="private address"):
            await service.put_object(
                ctx, {**KEYS, "endpoint": "http://localhost:1"}, {"Bucket": "b", "Key": "k"}
            )
    finally:
        await service.stop()


async def test_a_refused_endpoint_is_a_networking_error() -> None:
    service = PluginS3(allow_private=True, connect_timeout_seconds=2)
    ctx = PluginContext(plugin_config_id=1, plugin_id=1, team_id=2, plugin_name="s3")
    options = {**KEYS, "endpoint": f"http://127.0.0.1:{free_port()}", "s3ForcePathStyle": True}
    try:
        with pytest.raises(AwsFailure) as failed:
            await asyncio.wait_for(service.put_object(ctx, options, {"Bucket": "b", "Key": "k"}), 120)
        assert failed.value.fields["code"] == "NetworkingError"
    finally:
        await service.stop()
