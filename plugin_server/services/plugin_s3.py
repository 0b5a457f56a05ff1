"""Amazon S3 for plugins: the work behind the `aws-sdk` facade's `S3.putObject` and `S3.upload`,
done by aiobotocore.

Requests from a sandbox are untrusted: credentials must come from the plugin (the host's own
AWS credentials, environment and config files are never used); a custom endpoint obeys fetch's
address policy (private, loopback and link-local targets are refused unless
PLUGIN_FETCH_ALLOW_PRIVATE); bodies are size-limited; every request has connect and read
timeouts. Failures carry the AWS SDK for JavaScript's `code`, `message` and `statusCode`.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from plugin_server.plugins.host_services import PluginContext
from plugin_server.services.destinations import DestinationFailure, count, private_url_host
from plugin_server.services.fetch import _PublicOnlyResolver

MAX_BODY_BYTES = 100 * 1024 * 1024
_CLIENTS_PER_SERVICE = 32
# What putObject/upload pass on to S3; anything else a plugin sends is ignored.
_PUT_PARAMS = (
    "Bucket", "Key", "ACL", "CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage",
    "ContentType", "Expires", "Metadata", "ServerSideEncryption", "SSEKMSKeyId", "StorageClass",
    "Tagging", "WebsiteRedirectLocation",
)  # fmt: skip


class AwsFailure(DestinationFailure):
    """A failure as the AWS SDK for JavaScript (v2) reports it."""

    def __init__(self, code: str, message: str, status_code: int | None = None) -> None:
        super().__init__(message, code=code, name=code, statusCode=status_code)


class PluginS3:
    """The `s3.*` request handlers (register each of `handlers()` on the request channel)."""

    name = "plugin-s3"

    def __init__(
        self,
        *,
        allow_private: bool = False,
        connect_timeout_seconds: float = 10.0,
        read_timeout_seconds: float = 60.0,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._allow_private = allow_private
        self._connect_timeout = connect_timeout_seconds
        self._read_timeout = read_timeout_seconds
        self._max_body = max_body_bytes
        # One client per (plugin config, client options): creating one loads the service model.
        self._clients: OrderedDict[str, tuple[Any, AsyncExitStack]] = OrderedDict()

    def handlers(self) -> dict[str, Any]:
        return {"s3.putObject": self.put_object, "s3.upload": self.upload}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        while self._clients:
            _, (_, stack) = self._clients.popitem()
            await stack.aclose()

    async def put_object(
        self, ctx: PluginContext, options: dict[str, Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        client, _ = await self._client(ctx, options)
        answer = await self._put(client, params)
        out = {"ETag": answer.get("ETag")}
        if answer.get("VersionId"):
            out["VersionId"] = answer["VersionId"]
        return out

    async def upload(
        self, ctx: PluginContext, options: dict[str, Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        """S3.upload (the managed upload) sends one PUT here: plugin payloads are small."""
        client, endpoint = await self._client(ctx, options)
        answer = await self._put(client, params)
        bucket, key = str(params["Bucket"]), str(params["Key"])
        if endpoint is not None and options.get("s3ForcePathStyle"):
            location = f"{endpoint.rstrip('/')}/{bucket}/{quote(key)}"
        elif endpoint is not None:
            url = urlsplit(endpoint)
            location = f"{url.scheme}://{bucket}.{url.netloc}/{quote(key)}"
        else:
            region = options.get("region") or "us-east-1"
            location = f"https://{bucket}.s3.{region}.amazonaws.com/{quote(key)}"
        return {"ETag": answer.get("ETag"), "Location": location, "Bucket": bucket, "Key": key}

    async def _put(self, client: Any, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("Bucket") or not params.get("Key"):
            raise AwsFailure("MissingRequiredParameter", "Missing required key 'Bucket' or 'Key' in params")
        body = _body(params.get("Body"))
        if len(body) > self._max_body:
            raise AwsFailure(
                "EntityTooLarge", f"Your proposed upload exceeds the limit of {self._max_body} bytes"
            )
        request = {k: params[k] for k in _PUT_PARAMS if params.get(k) is not None}
        request["Bucket"], request["Key"] = str(request["Bucket"]), str(request["Key"])
        try:
            answer: dict[str, Any] = await client.put_object(Body=body, **request)
            count("s3", "putObject", True)
        except ClientError as exc:
            count("s3", "putObject", False)
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise AwsFailure(
                str(error.get("Code", "UnknownError")), str(error.get("Message", exc)), status
            ) from None
        except EndpointConnectionError as exc:
            count("s3", "putObject", False)
            raise AwsFailure("NetworkingError", str(exc)) from None
        except (BotoCoreError, OSError, TimeoutError) as exc:
            count("s3", "putObject", False)
            raise AwsFailure("NetworkingError", str(exc) or type(exc).__name__) from None
        return answer

    async def _client(self, ctx: PluginContext, options: dict[str, Any]) -> tuple[Any, str | None]:
        credentials = options.get("credentials") or {}
        key_id = options.get("accessKeyId") or credentials.get("accessKeyId")
        secret = options.get("secretAccessKey") or credentials.get("secretAccessKey")
        token = options.get("sessionToken") or credentials.get("sessionToken")
        if not key_id or not secret:
            # Never the host's credentials: a plugin must bring its own.
            raise AwsFailure("CredentialsError", "Missing credentials in config")
        endpoint = options.get("endpoint") or None
        if endpoint is not None:
            endpoint = str(endpoint)
            if "://" not in endpoint:
                endpoint = ("https://" if options.get("sslEnabled", True) else "http://") + endpoint
            self._check_endpoint(endpoint)
        region = str(options.get("region") or "us-east-1")
        path_style = bool(options.get("s3ForcePathStyle"))
        identity = json.dumps([ctx.plugin_config_id, key_id, secret, token, endpoint, region, path_style])
        cached = self._clients.get(identity)
        if cached is not None:
            self._clients.move_to_end(identity)
            return cached[0], endpoint
        connector_args: Any = {} if self._allow_private else {"resolver": _PublicOnlyResolver()}
        config = AioConfig(
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path" if path_style else "auto"},
            connector_args=connector_args,
        )
        stack = AsyncExitStack()
        session = AioSession()
        session.set_config_variable("config_file", "/dev/null")  # the host's ~/.aws is not the plugin's
        session.set_config_variable("credentials_file", "/dev/null")
        client = await stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=region,
                endpoint_url=endpoint,
                aws_access_key_id=str(key_id),
                aws_secret_access_key=str(secret),
                aws_session_token=str(token) if token else None,
                config=config,
            )
        )
        self._clients[identity] = (client, stack)
        if len(self._clients) > _CLIENTS_PER_SERVICE:
            _, (_, oldest) = self._clients.popitem(last=False)
            await oldest.aclose()
        return client, endpoint

    def _check_endpoint(self, endpoint: str) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise AwsFailure("InvalidEndpoint", f"Invalid endpoint: {endpoint}")
        if not self._allow_private and (host := private_url_host(endpoint)) is not None:
            raise AwsFailure("NetworkingError", f"{host} is a private address plugins may not reach")


def _body(body: Any) -> bytes:
    """The facade sends a string, or a Buffer as {"$bytes": base64}."""
    if body is None:
        return b""
    if isinstance(body, dict) and set(body) == {"$bytes"}:
        return base64.b64decode(body["$bytes"])
    if isinstance(body, str):
        return body.encode()
    raise AwsFailure("InvalidParameterType", "Body must be a string or a Buffer")
