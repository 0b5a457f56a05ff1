"""The wire format between the host and a sandbox: length-prefixed JSON frames on a socket pair.

Host -> sandbox messages (JSON arrays):
    ["load", req_id, key, spec, source]       import a plugin config's module and run setup_plugin
    ["call", req_id, key, method, [args...], timeout]
                                              run `method` once per args entry (a batch)
    ["unload", key]                           forget a plugin config's module
    ["reply", rpc_id, ok, value]              answer to a host-service request
    ["close"]                                 stop the sandbox
Sandbox -> host messages:
    ["result", req_id, [[ok, value, error, mutated_input], ...]]
    ["rpc", rpc_id, key, name, [args...]]     call host service `name`; answered by "reply"
    ["notify", key, name, [args...]]          call host service `name`, no answer wanted
    ["beat"]                                  the sandbox loop is alive (sent while busy)

`error` is {"name", "message", "stack", "retry"}. Standard library only: this module is imported
inside sub-interpreters too.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


class _Encoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, bytes | bytearray | memoryview):
            return {"$bytes": base64.b64encode(bytes(o)).decode("ascii")}
        return super().default(o)


def _decode_object(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$bytes" in obj:
        return base64.b64decode(obj["$bytes"])
    return obj


_encoder = _Encoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# For plugin results: plain JSON only (bytes, sets, datetimes are errors, as the spec says).
_strict_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_decoder = json.JSONDecoder(object_hook=_decode_object)


def encode(message: Any, *, strict: bool = False) -> bytes:
    """One frame: 4-byte big-endian length, then the UTF-8 JSON body."""
    body = (_strict_encoder if strict else _encoder).encode(message).encode("utf-8")
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Any:
    return _decoder.decode(body.decode("utf-8"))


def error_payload(exc: BaseException, stack: str = "") -> dict[str, Any]:
    retry = any(cls.__name__ == "RetryError" for cls in type(exc).__mro__)
    try:
        message = str(exc)
    except Exception:  # a plugin's exception class whose __str__ fails
        message = f"<{type(exc).__name__} whose message cannot be shown>"
    return {"name": type(exc).__name__, "message": message, "stack": stack, "retry": retry}
