"""Hostile plugins are contained: each failure is logged to the plugin's log, counted, and the
next event is still processed."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import asyncpg
import pytest

from plugin_server.metrics import REGISTRY
from tests.plugins.conftest import RunnerFactory, add_python_plugin, config_error, default_event, log_rows

PWNED = Path("/tmp/pwned-by-plugin")
FOLLOWER = """
def process_event(event, meta):
    event["properties"]["follower_ran"] = True
    return event
"""


def calls(method: str, result: str) -> float:
    return (
        REGISTRY.get_sample_value("plugin_server_plugin_calls_total", {"method": method, "result": result})
        or 0.0
    )


HOSTILE = {
    "infinite_loop": (
        "while True:\n        pass",
        "TimeoutError",
        "Script execution timed out after looping for 1 second",
    ),
    "two_gigabytes": (
        'blob = b"x" * (2 * 1024**3)\n    event["size"] = len(blob)',
        "MemoryError",
        "memory limit",
    ),
    "os_system": (
        'import os\n    os.system("touch /tmp/pwned-by-plugin")',
        "ImportError",
        "Cannot import 'os'",
    ),
    "os_via_stdlib": (
        'import random\n    random._os.system("touch /tmp/pwned-by-plugin")',
        "PermissionError",
        "os.system",
    ),
    "subprocess": (
        'import typing\n    typing.sys.modules["importlib"].import_module("subprocess").run(["true"])',
        "PermissionError",  # asyncio has imported subprocess already: the audit hook stops Popen
        "subprocess.Popen",
    ),
    "socket": (
        'import typing\n    typing.sys.modules["_socket"].socket()',
        "PermissionError",
        "socket.__new__",
    ),
    "ctypes": (
        'import typing\n    typing.sys.modules["importlib"].import_module("ctypes")',
        "ImportError",
        "ctypes",
    ),
    "open_passwd": ('open("/etc/passwd").read()', "PermissionError", "/etc/passwd"),
    "raising": ('raise ValueError("error thrown in plugin")', "ValueError", "error thrown in plugin"),
    "wrong_type": ('return ["not", "an", "event"]', "TypeError", "must return a dict or None"),
    "new_interpreter": (
        'import typing\n    typing.sys.modules["importlib"].import_module("_interpreters").create()',
        "ImportError",
        "_interpreters",
    ),
    "gc_walk": (
        'import typing\n    typing.sys.modules["importlib"].import_module("gc").get_objects()',
        "PermissionError",
        "gc.get_objects",
    ),
    "write_file": (
        'import io\n    io.open("/tmp/pwned-by-plugin", "w").write("x")',
        "PermissionError",
        "pwned",
    ),
    # functions that act on the whole process and raise no audit event: replaced in the sandbox
    # (the arguments are harmless ones, so that a regression fails the test, not the test run)
    "os_exit": ("import random\n    random._os._exit(3)", "PermissionError", "os._exit"),
    "close_descriptor": ("import random\n    random._os.close(1000)", "PermissionError", "os.close"),
    "write_descriptor": ('import random\n    random._os.write(1000, b"x")', "PermissionError", "os.write"),
    "raise_signal": (
        'import typing\n    typing.sys.modules["signal"].raise_signal(17)',
        "PermissionError",
        "signal.raise_signal",
    ),
    "alarm": ('import typing\n    typing.sys.modules["signal"].alarm(0)', "PermissionError", "signal.alarm"),
    "interrupt_main": (
        'import typing\n    typing.sys.modules["_thread"].interrupt_main(17)',
        "PermissionError",
        "_thread.interrupt_main",
    ),
    "fresh_posix": (
        'import typing\n    modules = typing.sys.modules\n    del modules["posix"]\n'
        '    modules["importlib"].import_module("posix")',
        "ImportError",
        "Cannot import 'posix'",
    ),
    # BaseExceptions fail the call like any other error; the sandbox goes on
    "system_exit": ("raise SystemExit(4)", "SystemExit", "4"),
    "keyboard_interrupt": ('raise KeyboardInterrupt("stop")', "KeyboardInterrupt", "stop"),
    "unprintable_error": (
        'class Odd(Exception):\n        def __str__(self):\n            raise ValueError("no")\n'
        "    raise Odd()",
        "Odd",
        "cannot be shown",
    ),
    # a result that cannot be encoded fails its own call instead of stalling the sandbox
    "too_deep_to_encode": (
        "deep = []\n    for _ in range(100000):\n        deep = [deep]\n"
        '    event["properties"]["deep"] = deep',
        "TypeError",
        "JSON-compatible",
    ),
    "thread": (
        'import typing\n    typing.sys.modules["threading"].Thread(target=print).start()',
        "PermissionError",
        "_thread",
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_process_event_is_contained(
    kind: str, pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    statement, error_name, message_part = HOSTILE[kind]
    body = (
        "def process_event(event, meta):\n"
        '    if event["event"] == "hostile":\n'
        + textwrap.indent(statement.replace("\n    ", "\n"), " " * 8)
        + '\n    event["properties"]["hostile_ran"] = True\n'
        "    return event\n"
    )
    await add_python_plugin(pg, body)
    await add_python_plugin(pg, FOLLOWER, plugin_id=61, config_id=40, order=1, name="follower")
    before = calls("process_event", "ok")
    async with plugin_runner(task_timeout=1.0, sandbox_memory_limit_mb=256) as runner:
        runner.pool.stuck_after = 60  # page-faulting 2 GB can take seconds on a busy machine
        results = await runner.process_events([default_event(event="hostile"), default_event(event="fine")])
        hostile, fine = results
        # the hostile event went on to the next plugin, marked as failed by the hostile one
        assert hostile is not None
        assert hostile["properties"]["follower_ran"] is True
        assert hostile["properties"]["$plugins_failed"] == ["test-maxmind-plugin (39)"]
        assert "hostile_ran" not in hostile["properties"]
        # the next event went through both plugins
        assert fine is not None and fine["properties"]["hostile_ran"] is True
        assert fine["properties"]["$plugins_succeeded"] == ["test-maxmind-plugin (39)", "follower (40)"]
        await runner.settle()
        error = await config_error(pg)
        assert error is not None
        if error_name:
            assert error["name"] == error_name, error
            assert message_part in error["message"], error
        assert error["event"]["event"] == "hostile"
        rows = [r for r in await log_rows(pg) if r["source"] == "PLUGIN" and r["type"] == "ERROR"]
        assert [r["message"] for r in rows] == [error["message"]]
        # and the sandbox still works afterwards
        [again] = await runner.process_events([default_event(event="fine")])
        assert again is not None and again["properties"]["hostile_ran"] is True
    assert calls("process_event", "ok") >= before + 3
    assert not await asyncio.to_thread(PWNED.exists)


async def test_setup_that_always_fails_is_retried_then_disabled(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        def setup_plugin(meta):
            raise RuntimeError("setup says no")

        def process_event(event, meta):
            event["properties"]["ran"] = True
            return event
        """,
    )
    await add_python_plugin(pg, FOLLOWER, plugin_id=61, config_id=40, order=1, name="follower")
    async with plugin_runner(retry_delay_scale=0.001) as runner:
        # while failing, the plugin is invisible: events bypass it
        [event] = await runner.process_events([default_event()])
        assert event is not None and "ran" not in event["properties"]
        assert event["properties"]["follower_ran"] is True
        for _ in range(400):
            if runner.loaded[39].disabled:
                break
            await asyncio.sleep(0.05)
        assert runner.loaded[39].disabled
        assert runner.loaded[39].attempts == 10
        await runner.logs.flush()
    assert await pg.fetchval("SELECT enabled FROM posthog_pluginconfig WHERE id = 39") is False
    messages = [r["message"] for r in await log_rows(pg) if r["source"] == "SYSTEM"]
    retries = [m for m in messages if "Retrying in" in m]
    assert [m.rsplit("Retrying in ", 1)[1] for m in retries] == [f"{3 * 2**n} s." for n in range(9)]
    assert messages.count("setup says no") == 10
    assert any(
        "Disabling it due to too many retries – tried to load it 10 times before giving up." in m
        for m in messages
    )
    assert (await config_error(pg))["message"] == "setup says no"


async def test_sandbox_stuck_in_c_code_is_replaced(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    """time.sleep cannot be interrupted inside the interpreter: the host gives up on the sandbox,
    fails the call with a timeout, and carries on with a fresh one."""
    await add_python_plugin(
        pg,
        """
        import time

        def process_event(event, meta):
            if event["event"] == "sleepy":
                time.sleep(4)
            event["properties"]["ok"] = True
            return event
        """,
    )
    async with plugin_runner(task_timeout=0.5) as runner:
        runner.pool.stuck_after = 1.0
        [sleepy] = await runner.process_events([default_event(event="sleepy")])
        assert sleepy is not None and sleepy["properties"]["$plugins_failed"] == ["test-maxmind-plugin (39)"]
        [fine] = await runner.process_events([default_event(event="fine")])
        assert fine is not None and fine["properties"]["ok"] is True
        assert runner.pool.replaced == 1
        await asyncio.sleep(0.05)
        error = await config_error(pg)
        assert error["name"] == "TimeoutError" and "stopped responding" in error["message"]
