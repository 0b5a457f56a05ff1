"""Spec plugins.md §6.7 (transforms) and §6.6 (console) in their original JS form."""

from __future__ import annotations

import asyncpg
import pytest

from plugin_server.plugins.js.transpile import TranspileError, Transpiler
from plugin_server.plugins.runner import PluginRunner
from tests.js.conftest import Loader


async def test_6_7_93_94_await_is_guarded_with_a_static_label(transpiler: Transpiler) -> None:
    """Recommendation (spec §8 item 28): the label is a string, so the callee is not evaluated twice."""
    code = await transpiler.transform(
        "async function x() { await console.log(); await anotherAsyncFunction('arg1', 'arg2') }", 30
    )
    assert code.startswith('"use strict";')
    assert 'await __asyncGuard(console.log(), "console.log");' in code
    assert "await __asyncGuard(anotherAsyncFunction('arg1', 'arg2'), \"anotherAsyncFunction\");" in code


async def test_6_7_96_then_is_guarded(transpiler: Transpiler) -> None:
    assert "__asyncGuard(x).then(() => null);" in await transpiler.transform("x.then(() => null)", 30)


async def test_6_7_97_to_99_loop_guards(transpiler: Transpiler) -> None:
    code = await transpiler.transform("for (let i = 0; i < 5; i++) {\n  console.log(i)\n}", 30)
    assert "const _LP = Date.now();" in code
    assert (
        'if (Date.now() - _LP > 30000) throw new Error("Script execution timed out after looping for 30 seconds on line 1:0");'
        in code
    )
    inline = await transpiler.transform("for (let i = 0; i < 5; i++) console.log(i)", 30)
    assert "console.log(i);\n}" in inline and "_LP > 30000" in inline
    clash = await transpiler.transform("const _LP = 0\n\nwhile (true) {}", 30)
    assert "const _LP2 = Date.now();" in clash and "on line 3:0" in clash


async def test_6_7_100_typescript_types_are_stripped(transpiler: Transpiler) -> None:
    code = await transpiler.transform(
        "interface Foo { bar: string }\nfunction f(a: Foo, b: number): string { let c: number = 2; return a.bar + b + c }",
        30,
    )
    assert "interface" not in code and ": number" not in code
    assert "function f(a, b) {" in code and "let c = 2;" in code


async def test_6_7_101_imports_read_host_imports(transpiler: Transpiler) -> None:
    code = await transpiler.transform(
        "import { bla, bla2, bla3 as bla4 } from 'node-fetch'\nimport fetch1 from 'node-fetch'\nimport * as fetch2 from 'node-fetch'",
        30,
    )
    assert 'const bla = __pluginHostImports["node-fetch"]["bla"],' in code
    assert 'bla4 = __pluginHostImports["node-fetch"]["bla3"];' in code
    assert 'const fetch1 = __pluginHostImports["node-fetch"];' in code
    assert 'const fetch2 = __pluginHostImports["node-fetch"];' in code


@pytest.mark.parametrize("source", ["import { kea } from 'kea'", "const kea = require('kea')"])
async def test_6_7_102_103_forbidden_import_fails(transpiler: Transpiler, source: str) -> None:
    with pytest.raises(TranspileError) as failed:
        await transpiler.transform(source, 30)
    assert failed.value.message.endswith(
        "index.ts: Cannot import 'kea'! This package is not provided by PostHog in plugins."
    )


async def test_6_7_103_require_reads_host_imports(transpiler: Transpiler) -> None:
    code = await transpiler.transform(
        "const fetch = require('node-fetch')\nconst { createHash } = require('crypto')", 30
    )
    assert 'const fetch = __pluginHostImports["node-fetch"];' in code
    assert 'createHash\n} = __pluginHostImports["crypto"];' in code


@pytest.mark.parametrize(
    "name", ["snowflake-sdk", "@google-cloud/pubsub", "@google-cloud/storage", "faker", "stream"]
)
@pytest.mark.parametrize("form", ["import * as lib from '{}'", "const lib = require('{}')"])
async def test_allowed_but_unprovided_import_fails_with_one_line(
    transpiler: Transpiler, name: str, form: str
) -> None:
    with pytest.raises(TranspileError) as failed:
        await transpiler.transform(
            "import { RetryError } from '@posthog/plugin-scaffold'\n" + form.format(name), 30
        )
    assert failed.value.message == f"Plugin imports '{name}', which this server does not provide"


@pytest.mark.parametrize("level", ["debug", "log", "info", "warn", "error"])
async def test_6_6_92_console_levels_and_formatting(
    make_vm: Loader, pg: asyncpg.Pool, runner: PluginRunner, level: str
) -> None:
    vm = await make_vm(f"""
        export async function processEvent (e) {{
            await console.{level}()
            await console.{level}('number =', 987)
            await console.{level}(new Error('something'))
            await console.{level}({{1: 'ein', 2: 'zwei'}})
            await console.{level}([99, 79])
            return e
        }}
    """)
    await vm.call_method("processEvent", {"event": "x", "team_id": 2})
    await runner.logs.flush()
    rows = await pg.fetch("SELECT type, message FROM posthog_pluginlogentry ORDER BY timestamp")
    assert {r["type"] for r in rows} == {level.upper()}
    assert [r["message"] for r in rows] == [
        "",
        "number = 987",
        "Error: something",
        '{"1":"ein","2":"zwei"}',
        "[99,79]",
    ]


async def test_an_import_used_only_as_a_type_is_dropped(transpiler: Transpiler) -> None:
    """As the original's Babel did: PostHog's S3 export plugin names `ManagedUpload` from
    'aws-sdk/clients/s3', a module no plugin can import, only as a type."""
    code = await transpiler.transform(
        "import { S3 } from 'aws-sdk'\nimport { ManagedUpload } from 'aws-sdk/clients/s3'\n"
        "let upload: ManagedUpload | null = null\nexport const s3 = new S3()",
        30,
    )
    assert "clients/s3" not in code and '__pluginHostImports["aws-sdk"]' in code
    with pytest.raises(TranspileError, match="Cannot import 'aws-sdk/clients/s3'"):
        await transpiler.transform(
            "import { ManagedUpload } from 'aws-sdk/clients/s3'\nManagedUpload.x()", 30
        )
