"""Node's built-ins inside plugin isolates (crypto, zlib, url, Buffer, TextEncoder/TextDecoder)
against published test vectors, Python's own implementations, and data made by Node.

tests/js/data/events.json* were made once with Node 20's zlib (gzipSync level 9, deflateSync,
deflateRawSync of events.json)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import os
import zlib
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from plugin_server.plugins.js.vm import CallFailed
from plugin_server.plugins.runner import PluginRunner
from tests.js.conftest import Loader, config_error

DATA = Path(__file__).parent / "data"


async def run(make_vm: Loader, body: str, *, imports: str = "", arg: Any = None) -> Any:
    """The value of `body` (an async function body that gets `arg`) run in a plugin isolate."""
    vm = await make_vm(f"{imports}\nexport async function processEvent(arg) {{\n{body}\n}}")
    return await vm.call_method("processEvent", arg)


# -- crypto: FIPS 180 / RFC 1321 digests, RFC 4231 / RFC 2202 HMACs

DIGESTS = [
    ("md5", "", "d41d8cd98f00b204e9800998ecf8427e"),
    ("md5", "abc", "900150983cd24fb0d6963f7d28e17f72"),
    ("sha1", "abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
    (
        "sha1",
        "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
    ),
    ("sha256", "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        "sha256",
        "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    (
        "sha512",
        "abc",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    ),
]


@pytest.mark.parametrize(("algorithm", "text", "expected"), DIGESTS)
async def test_create_hash_matches_published_digests(
    make_vm: Loader, algorithm: str, text: str, expected: str
) -> None:
    got = await run(
        make_vm,
        "return createHash(arg.algorithm).update(arg.text).digest('hex')",
        imports="import { createHash } from 'crypto'",
        arg={"algorithm": algorithm, "text": text},
    )
    assert got == expected


async def test_a_million_a_through_chained_updates(make_vm: Loader) -> None:
    """FIPS 180-2's long-message vector, fed in 1,000 updates of 1,000 bytes."""
    got = await run(
        make_vm,
        """const h = crypto.createHash('sha256'), chunk = 'a'.repeat(1000)
           for (let i = 0; i < 1000; i++) h.update(chunk)
           return h.digest('hex')""",
        imports="import crypto from 'crypto'",
    )
    assert got == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"


RFC4231 = [  # (key hex, data hex, HMAC-SHA256, HMAC-SHA512) test cases 1, 2, 6
    (
        "0b" * 20,
        b"Hi There".hex(),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    ),
    (
        b"Jefe".hex(),
        b"what do ya want for nothing?".hex(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    ),
    (
        "aa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
    ),
]


@pytest.mark.parametrize(("key", "data", "sha256", "sha512"), RFC4231)
async def test_create_hmac_matches_rfc_4231(
    make_vm: Loader, key: str, data: str, sha256: str, sha512: str
) -> None:
    got = await run(
        make_vm,
        """const key = Buffer.from(arg.key, 'hex'), data = Buffer.from(arg.data, 'hex')
           return [createHmac('sha256', key).update(data).digest('hex'),
                   createHmac('sha512', key).update(data).digest('hex')]""",
        imports="import { createHmac } from 'crypto'",
        arg={"key": key, "data": data},
    )
    assert got == [sha256, sha512]


async def test_hmac_md5_and_sha1_match_rfc_2202(make_vm: Loader) -> None:
    got = await run(
        make_vm,
        """return [createHmac('md5', 'Jefe').update('what do ya want for nothing?').digest('hex'),
                   createHmac('sha1', 'Jefe').update('what do ya want for nothing?').digest('hex')]""",
        imports="const { createHmac } = require('crypto')",
    )
    assert got == ["750c783e6ab0b503eaa86e310a5db738", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"]


async def test_hash_encodings_match_hashlib(make_vm: Loader) -> None:
    """Inputs in utf8, hex, base64 and latin1; digests to hex, base64, latin1 and a Buffer."""
    blob = os.urandom(300)
    text = "naïve café ✓ 🎉"
    got = await run(
        make_vm,
        """const h = createHash('sha512').update(arg.text).update(arg.hex, 'hex').update(arg.b64, 'base64')
           const copy = h.copy()
           const digest = h.digest()
           return {
             buffer: Buffer.isBuffer(digest), hex: digest.toString('hex'),
             base64: copy.copy().digest('base64'),
             latin1: Buffer.from(copy.digest('latin1'), 'latin1').toString('hex'),
             md5latin1: createHash('md5').update('\\u00e9\\u00ff', 'latin1').digest('hex'),
             hmacBuffer: Buffer.isBuffer(createHmac('sha1', Buffer.from(arg.hex, 'hex')).update(arg.text).digest()),
           }""",
        imports="import { createHash, createHmac } from 'crypto'",
        arg={"text": text, "hex": blob.hex(), "b64": base64.b64encode(blob[:77]).decode()},
    )
    expected = hashlib.sha512(text.encode() + blob + blob[:77]).digest()
    assert got == {
        "buffer": True,
        "hex": expected.hex(),
        "base64": base64.b64encode(expected).decode(),
        "latin1": expected.hex(),
        "md5latin1": hashlib.md5(b"\xe9\xff").hexdigest(),
        "hmacBuffer": True,
    }
    assert hmac.new(blob, text.encode(), "sha1").digest()  # the same HMAC in Python exists


async def test_hash_errors_are_nodes(make_vm: Loader) -> None:
    got = await run(
        make_vm,
        """const out = []
           for (const f of [() => createHash('whirlpool'), () => { const h = createHash('md5'); h.digest(); h.update('x') }]) {
             try { f() } catch (e) { out.push(e.message) }
           }
           return out""",
        imports="import { createHash } from 'crypto'",
    )
    assert got == ["Digest method not supported", "Digest already called"]


async def test_random_bytes_and_uuids(make_vm: Loader) -> None:
    got = await run(
        make_vm,
        """const a = randomBytes(48), b = randomBytes(48)
           const ids = new Set(Array.from({ length: 200 }, () => randomUUID()))
           return { isBuffer: Buffer.isBuffer(a), length: a.length, differ: !a.equals(b),
                    ids: [...ids], int: randomInt(10, 12) }""",
        imports="import { randomBytes, randomUUID, randomInt } from 'crypto'",
    )
    assert got["isBuffer"] and got["length"] == 48 and got["differ"]
    assert len(got["ids"]) == 200
    for value in got["ids"]:
        assert len(value) == 36 and value[14] == "4" and value[19] in "89ab"
    assert got["int"] in (10, 11)


async def test_each_isolate_gets_its_own_randomness(make_vm: Loader) -> None:
    body = "return randomBytes(16).toString('hex')"
    imports = "import { randomBytes } from 'crypto'"
    assert await run(make_vm, body, imports=imports) != await run(make_vm, body, imports=imports)


# -- zlib: Node-made data in, Python's zlib on what comes out


async def test_zlib_reads_what_node_wrote(make_vm: Loader) -> None:
    got = await run(
        make_vm,
        """const gz = Buffer.from(arg.gz, 'base64'), zz = Buffer.from(arg.zz, 'base64'), raw = Buffer.from(arg.raw, 'base64')
           const viaCallback = await new Promise((resolve, reject) => zlib.gunzip(gz, (err, out) => err ? reject(err) : resolve(out)))
           return [zlib.gunzipSync(gz).toString(), zlib.inflateSync(zz).toString(), zlib.inflateRawSync(raw).toString(),
                   zlib.unzipSync(gz).toString(), zlib.unzipSync(zz).toString(), viaCallback.toString()]""",
        imports="import * as zlib from 'zlib'",
        arg={
            "gz": base64.b64encode((DATA / "events.json.gz").read_bytes()).decode(),
            "zz": base64.b64encode((DATA / "events.json.deflate").read_bytes()).decode(),
            "raw": base64.b64encode((DATA / "events.json.deflate-raw").read_bytes()).decode(),
        },
    )
    original = (DATA / "events.json").read_text()
    assert got == [original] * 6


async def test_zlib_output_reads_back_in_python(make_vm: Loader) -> None:
    text = (DATA / "events.json").read_text()
    got = await run(
        make_vm,
        """const deflated = await new Promise((resolve, reject) =>
             zlib.deflate(Buffer.from(arg), { level: 1 }, (err, out) => err ? reject(err) : resolve(out)))
           return [zlib.gzipSync(arg).toString('base64'), deflated.toString('base64'),
                   zlib.deflateRawSync(arg).toString('base64'), Buffer.isBuffer(deflated)]""",
        imports="const zlib = require('zlib')",
        arg=text,
    )
    gz, zz, raw, is_buffer = got
    assert gzip.decompress(base64.b64decode(gz)).decode() == text
    assert zlib.decompress(base64.b64decode(zz)).decode() == text
    assert zlib.decompress(base64.b64decode(raw), -15).decode() == text
    assert is_buffer is True


async def test_zlib_errors_are_nodes(make_vm: Loader) -> None:
    got = await run(
        make_vm,
        """const out = []
           try { zlib.gunzipSync(Buffer.from('not gzip')) } catch (e) { out.push([e.message, e.code, e.errno]) }
           out.push(await new Promise(resolve => zlib.inflate(Buffer.from('nope'), (err) => resolve([err.message, err.code]))))
           return out""",
        imports="import zlib from 'zlib'",
    )
    assert got == [["incorrect header check", "Z_DATA_ERROR", -3], ["incorrect header check", "Z_DATA_ERROR"]]


# -- URL: WHATWG URL Standard cases (url.spec.whatwg.org and its web-platform tests)

URL_CASES = [
    ("https://example.com", None, "https://example.com/"),
    ("HTTPS://EXAMPLE.com:443/a/./b/../c", None, "https://example.com/a/c"),
    (
        "https://example.com/café?q=ü s#frag ment",
        None,
        "https://example.com/caf%C3%A9?q=%C3%BC%20s#frag%20ment",
    ),
    ("http://münchen.de/", None, "http://xn--mnchen-3ya.de/"),
    ("http://[::1]:8080/x", None, "http://[::1]:8080/x"),
    ("http://user:pa ss@host/", None, "http://user:pa%20ss@host/"),
    ("g", "http://a/b/c/d;p?q", "http://a/b/c/g"),
    ("../g", "http://a/b/c/d;p?q", "http://a/b/g"),
    ("../../../g", "http://a/b/c/d;p?q", "http://a/g"),
    ("?y", "http://a/b/c/d;p?q", "http://a/b/c/d;p?y"),
    ("#s", "http://a/b/c/d;p?q", "http://a/b/c/d;p?q#s"),
    ("//g", "http://a/b/c/d;p?q", "http://g/"),
    ("/g", "http://a/b/c/d;p?q", "http://a/g"),
    ("mailto:someone@example.com", None, "mailto:someone@example.com"),
    ("file:///tmp/x", None, "file:///tmp/x"),
]


@pytest.mark.parametrize(("input", "base", "href"), URL_CASES)
async def test_url_parsing_and_serialisation(
    make_vm: Loader, input: str, base: str | None, href: str
) -> None:
    got = await run(
        make_vm, "return new URL(arg.input, arg.base ?? undefined).href", arg={"input": input, "base": base}
    )
    assert got == href


async def test_url_setters_and_components(make_vm: Loader) -> None:
    got = await run(
        make_vm,
        """const u = new URL('https://user@example.com:8443/a?x=1#h')
           const parts = [u.protocol, u.username, u.host, u.hostname, u.port, u.pathname, u.search, u.hash, u.origin]
           u.pathname = '/ça va'; u.search = 'q=a b'; u.hash = 'top'; u.port = '443'; u.protocol = 'http'
           const after = u.href
           u.host = 'other.org:81'; u.searchParams.append('k', 'v&w')
           return { parts, after, last: u.toString(), json: JSON.stringify({ u }) }""",
    )
    assert got == {
        "parts": [
            "https:",
            "user",
            "example.com:8443",
            "example.com",
            "8443",
            "/a",
            "?x=1",
            "#h",
            "https://example.com:8443",
        ],
        "after": "http://user@example.com/%C3%A7a%20va?q=a%20b#top",  # 443 is https's default
        "last": "http://user@other.org:81/%C3%A7a%20va?q=a+b&k=v%26w#top",
        "json": '{"u":"http://user@other.org:81/%C3%A7a%20va?q=a+b&k=v%26w#top"}',
    }


async def test_url_search_params(make_vm: Loader) -> None:
    got = await run(
        make_vm,
        """const p = new URLSearchParams('?a=1&b=x+y&a=%C3%A9')
           const q = new UrlSearchParams({ k: '1 2', 'é': '&' })
           p.set('b', 'z'); p.sort()
           return { all: p.getAll('a'), str: p.toString(), q: q.toString(), entries: [...q], has: p.has('c'),
                    same: URLSearchParams === UrlSearchParams && URL === ImportedURL }""",
        imports="import { URLSearchParams as UrlSearchParams, URL as ImportedURL } from 'url'",
    )
    assert got == {
        "all": ["1", "é"],
        "str": "a=1&a=%C3%A9&b=z",
        "q": "k=1+2&%C3%A9=%26",
        "entries": [["k", "1 2"], ["é", "&"]],
        "has": False,
        "same": True,
    }


async def test_invalid_url_is_a_type_error(make_vm: Loader) -> None:
    with pytest.raises(CallFailed) as failed:
        await run(make_vm, "return new URL('not a url')")
    assert failed.value.error.name == "TypeError"
    assert "Invalid URL" in failed.value.error.message


# -- Buffer, TextEncoder, TextDecoder


async def test_buffer_is_nodes(make_vm: Loader) -> None:
    got = await run(
        make_vm,
        """const b = Buffer.from('héllo wörld')
           const n = Buffer.alloc(8); n.writeUInt32BE(0xdeadbeef, 0); n.writeInt16LE(-2, 4)
           return { hex: b.toString('hex'), b64: b.toString('base64'), b64url: Buffer.from([251, 255]).toString('base64url'),
                    latin1: Buffer.from('\\u00e9', 'latin1')[0], back: Buffer.from(b.toString('base64'), 'base64').toString(),
                    len: Buffer.byteLength('✓'), concat: Buffer.concat([Buffer.from('a'), Buffer.from('bc')]).toString(),
                    slice: b.slice(0, 2).toString('hex'), n: n.toString('hex'), u32: n.readUInt32BE(0),
                    json: JSON.stringify(Buffer.from('hi')), cmp: Buffer.compare(Buffer.from('a'), Buffer.from('b')),
                    isU8: b instanceof Uint8Array, includes: b.includes('wör'), index: b.indexOf('l') }""",
    )
    text = "héllo wörld".encode()
    assert got == {
        "hex": text.hex(),
        "b64": base64.b64encode(text).decode(),
        "b64url": "-_8",
        "latin1": 0xE9,
        "back": "héllo wörld",
        "len": 3,
        "concat": "abc",
        "slice": text[:2].hex(),
        "n": "deadbeeffeff0000",
        "u32": 0xDEADBEEF,
        "json": json.dumps({"type": "Buffer", "data": [104, 105]}, separators=(",", ":")),
        "cmp": -1,
        "isU8": True,
        "includes": True,
        "index": 3,
    }


async def test_text_encoder_and_decoder(make_vm: Loader) -> None:
    got = await run(
        make_vm,
        """const bytes = new TextEncoder().encode('café 🎉')
           let fatal = null
           try { new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array([0xc3])) } catch (e) { fatal = e.name }
           return { bytes: Array.from(bytes), text: new TextDecoder().decode(bytes),
                    lossy: new TextDecoder().decode(new Uint8Array([0x61, 0xff, 0x62])), fatal,
                    latin1: new TextDecoder('latin1').decode(new Uint8Array([0xe9])) }""",
    )
    assert got == {
        "bytes": list("café 🎉".encode()),
        "text": "café 🎉",
        "lossy": "a\ufffdb",
        "fatal": "TypeError",
        "latin1": "é",
    }


async def test_a_plugin_without_these_names_loads_no_library(make_vm: Loader) -> None:
    """The url bundle is parsed only when the code refers to it (it is the largest)."""
    lean = await make_vm("export function processEvent(e) { return e }")
    with_url = await make_vm("export function processEvent(e) { e.u = new URL('http://x').href; return e }")
    await with_url.call_method("processEvent", {})
    assert with_url.memory_used() > lean.memory_used()


async def test_an_unprovided_import_fails_the_load_with_one_line(
    load_plugin: Loader, pg: asyncpg.Pool, runner: PluginRunner
) -> None:
    plugin = await load_plugin("""
        import { Snowflake } from 'snowflake-sdk'
        export async function exportEvents (events) { await new Snowflake().insert(events) }
    """)
    assert plugin.loaded.exports is None
    message = "Plugin imports 'snowflake-sdk', which this server does not provide"
    assert (await config_error(pg))["message"] == message
    await runner.logs.flush()
    plugin_errors = await pg.fetch(
        "SELECT message FROM posthog_pluginlogentry WHERE source = 'PLUGIN' AND type = 'ERROR'"
    )
    assert [r["message"] for r in plugin_errors] == [message]
