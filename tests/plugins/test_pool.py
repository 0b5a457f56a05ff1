"""The sandbox pool without the database: interpreters created, used and closed repeatedly, work
spread over sandboxes, lazy loading, and the 6.3 timeouts in Python form."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest
import structlog.testing

from plugin_server.metrics import REGISTRY
from plugin_server.plugins.host_services import HostServices, PluginContext
from plugin_server.plugins.pool import Sandbox, SandboxError, SandboxPool

CONTEXT = PluginContext(plugin_config_id=39, plugin_id=60, team_id=2, plugin_name="p")

DATES = """
import datetime, decimal, zoneinfo, json

def process_event(event, meta):
    when = datetime.datetime.fromisoformat(event["timestamp"]).astimezone(zoneinfo.ZoneInfo("UTC"))
    event["properties"]["day"] = when.date().isoformat()
    event["properties"]["price"] = str(decimal.Decimal("1.10") * 3)
    return event
"""


def spec(timeout: float = 5.0) -> dict:
    return {"plugin_config_id": 39, "team_id": 2, "config": {}, "timeout": timeout}


async def test_interpreters_survive_create_use_close_cycles() -> None:
    """CPython 3.13.0 crashed when sandboxes imported datetime first; the pool imports it in the
    main interpreter before creating any. This stresses create/use/close with those imports."""
    for cycle in range(6):
        pool = SandboxPool(3, HostServices(), stuck_after=30)
        await pool.start()
        pool.register("39:1", spec(), DATES, CONTEXT)
        events = [[{"timestamp": "2021-10-28T23:30:00+02:00", "properties": {"n": i}}] for i in range(90)]
        outcomes = await pool.call("39:1", "process_event", events, 5.0)
        assert all(o.ok for o in outcomes), outcomes[0]
        assert {o.value["properties"]["day"] for o in outcomes} == {"2021-10-28"}
        assert {o.value["properties"]["price"] for o in outcomes} == {"3.30"}
        # the batch was spread: every sandbox loaded the module lazily
        assert all("39:1" in s.loaded for s in pool.sandboxes), cycle
        await pool.stop()
        assert all(s.exited.is_set() for s in pool.sandboxes) or not pool.sandboxes


async def test_6_3_56_await_past_the_deadline_times_out() -> None:
    pool = SandboxPool(1, HostServices())
    await pool.start()
    try:
        source = """
import asyncio

async def process_event(event, meta):
    for _ in range(4):
        await asyncio.sleep(0.8)
    event["properties"]["passed"] = True
    return event
"""
        pool.register("39:1", spec(timeout=1), source, CONTEXT)
        started = time.monotonic()
        [outcome] = await pool.call("39:1", "process_event", [[{"properties": {}}]], 1.0)
        elapsed = time.monotonic() - started
        assert not outcome.ok and outcome.error is not None
        assert outcome.error["name"] == "TimeoutError"
        assert outcome.error["message"] == "Script execution timed out after promise waited for 1 second"
        assert 1.0 <= elapsed < 4.0
        assert outcome.mutated_input is None  # nothing of a timed-out call leaks out (7.7.1)
    finally:
        await pool.stop()


async def test_6_3_47_loops_time_out_with_the_loop_message() -> None:
    pool = SandboxPool(1, HostServices())
    await pool.start()
    try:
        source = """
def process_event(event, meta):
    i = 0
    while True:
        i += 1

def on_event(event, meta):
    for i in iter(int, 1):  # an endless iterator in a for loop
        pass
"""
        pool.register("39:1", spec(timeout=1), source, CONTEXT)
        for method in ("process_event", "on_event"):
            started = time.monotonic()
            [outcome] = await pool.call("39:1", method, [[{"properties": {}}]], 1.0)
            assert outcome.error is not None
            assert outcome.error["message"] == "Script execution timed out after looping for 1 second"
            assert time.monotonic() - started >= 1.0
    finally:
        await pool.stop()


async def test_host_service_channel_is_generic() -> None:
    services = HostServices()
    seen: list[tuple[int, str]] = []

    async def shout(context: PluginContext, text: str) -> str:
        seen.append((context.plugin_config_id, text))
        return text.upper()

    services.register("shout", shout)
    pool = SandboxPool(1, services)
    await pool.start()
    try:
        source = """
async def process_event(event, meta):
    event["loud"] = await meta._request("shout", ["hi"])
    try:
        await meta.geoip.locate("1.2.3.4")
    except Exception as exc:
        event["geoip"] = [type(exc).__name__, str(exc)]
    return event
"""
        pool.register("39:1", spec(), source, CONTEXT)
        [outcome] = await pool.call("39:1", "process_event", [[{}]], 5.0)
        assert outcome.value == {
            "loud": "HI",
            "geoip": [
                "ServiceNotFound",
                "IP location capabilities are not available in this PostHog instance!",
            ],
        }
        assert seen == [(39, "hi")]
    finally:
        await pool.stop()


async def test_calls_run_concurrently_up_to_tasks_per_worker() -> None:
    pool = SandboxPool(1, HostServices(), tasks_per_worker=10)
    await pool.start()
    try:
        source = """
import asyncio

async def process_event(event, meta):
    await asyncio.sleep(0.3)
    return event
"""
        pool.register("39:1", spec(), source, CONTEXT)
        started = time.monotonic()
        outcomes = await pool.call("39:1", "process_event", [[{"n": i}] for i in range(20)], 5.0)
        elapsed = time.monotonic() - started
        assert all(o.ok for o in outcomes)
        # 20 calls, 10 at a time, 0.3 s each: two waves
        assert 0.6 <= elapsed < 1.5
    finally:
        await pool.stop()


async def test_sandbox_crash_fails_calls_and_is_replaced() -> None:
    pool = SandboxPool(1, HostServices())
    await pool.start()
    try:
        pool.register("39:1", spec(), "def process_event(event, meta):\n    return event\n", CONTEXT)
        [outcome] = await pool.call("39:1", "process_event", [[{"a": 0}]], 5.0)
        assert outcome.ok
        [sandbox] = pool.sandboxes
        sandbox.abandon("gone")
        await asyncio.sleep(0)
        [outcome] = await pool.call("39:1", "process_event", [[{"a": 1}]], 5.0)
        assert outcome.ok and outcome.value == {"a": 1}
        assert pool.replaced == 1 and pool.sandboxes[0] is not sandbox
    finally:
        await pool.stop()


async def test_a_reply_larger_than_the_socket_buffer_reaches_the_host() -> None:
    """asyncio writes what does not fit the socket buffer at once with `sendmsg`, which plugin
    code may not use; the sandbox's own channel may (a big batch used to kill the sandbox)."""
    pool = SandboxPool(1, HostServices())
    await pool.start()
    try:
        source = (
            "def process_event(event, meta):\n"
            "    event['properties']['echo'] = event['properties']['pad']\n"
            "    return event\n"
        )
        pool.register("39:1", spec(), source, CONTEXT)
        pad = "x" * 2048
        events = [[{"properties": {"n": i, "pad": pad}}] for i in range(2000)]  # ~8 MB back
        outcomes = await pool.call("39:1", "process_event", events, 30.0)
        assert all(o.ok for o in outcomes), outcomes[0]
        assert [o.value["properties"]["n"] for o in outcomes] == list(range(2000))
        assert all(o.value["properties"]["echo"] == pad for o in outcomes)
        assert pool.replaced == 0
    finally:
        await pool.stop()


def test_a_failed_sandbox_does_not_close_a_descriptor_it_no_longer_owns() -> None:
    """The guest's end of the channel may be closed by the guest before its interpreter fails;
    the number can then belong to a new socket (another sandbox's), which must stay open."""
    guest_end, host_end = socket.socketpair()
    fd = guest_end.detach()
    inode = os.fstat(fd).st_ino
    later: list[socket.socket] = []

    class FailingInterpreter:
        def exec(self, code: str) -> None:
            os.close(fd)  # the guest closed its socket...
            later.extend(socket.socketpair())  # ...and the number was handed out again
            raise RuntimeError("uncaught in the interpreter")

        def close(self) -> None:
            pass

    sandbox = Sandbox(1, SandboxPool(1, HostServices()))
    sandbox._make_interpreter = FailingInterpreter
    try:
        sandbox._run_interpreter(fd, inode, "{}")
        assert later[0].fileno() == fd  # the test reused the number, as a new sandbox would
        os.fstat(later[0].fileno())  # still open
        later[0].send(b"x")
        assert later[1].recv(1) == b"x"
        assert sandbox.exited.is_set()
    finally:
        host_end.close()
        for sock in later:
            sock.close()


async def test_a_sandbox_whose_channel_fails_to_open_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the host cannot open its end of the channel, the started guest sees the channel close,
    exits, and its interpreter is released (instead of waiting for a peer that never comes)."""

    async def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("no channel")

    sandbox = Sandbox(1, SandboxPool(1, HostServices()))
    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(asyncio, "open_connection", refuse)
    # pytest.raises keeps the traceback, and with it start()'s frame: nothing may rely on the
    # garbage collector closing the host's end
    with pytest.raises(OSError, match="no channel") as failure:
        await sandbox.start()
    monkeypatch.undo()
    assert await asyncio.to_thread(sandbox.exited.wait, 10.0)
    assert not sandbox.alive
    assert len(os.listdir("/proc/self/fd")) <= before
    del failure


async def test_integral_floats_a_plugin_returns_are_javascript_numbers() -> None:
    pool = SandboxPool(1, HostServices())
    await pool.start()
    try:
        source = (
            "def process_event(event, meta):\n    event['n'] = 2.0\n    event['x'] = 2.5\n    return event\n"
        )
        pool.register("39:1", spec(), source, CONTEXT)
        [outcome] = await pool.call("39:1", "process_event", [[{"a": 1}]], 5.0)
        assert outcome.ok and outcome.value == {"a": 1, "n": 2, "x": 2.5}
        assert type(outcome.value["n"]) is int
    finally:
        await pool.stop()


def tenant_context(config_id: int) -> PluginContext:
    return PluginContext(plugin_config_id=config_id, plugin_id=60, team_id=config_id, plugin_name="p")


ECHO = "def process_event(event, meta):\n    return event\n"


async def wait_for(condition: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_configs_of_different_tenants_never_share_a_sandbox() -> None:
    pool = SandboxPool(2, HostServices())
    await pool.start()
    try:
        for n, tenant in ((1, "org:a"), (2, "org:a"), (3, "org:b")):
            pool.register(f"{n}:k", spec(), ECHO, tenant_context(n), tenant)
        for key in ("1:k", "2:k", "3:k"):
            outcomes = await pool.call(key, "process_event", [[{"n": i}] for i in range(100)], 5.0)
            assert all(o.ok for o in outcomes)
        by_tenant = {s.number: (s.tenant, set(s.loaded)) for s in pool.sandboxes}
        assert len(pool.tenants["org:a"]) == 2 and len(pool.tenants["org:b"]) == 2  # split per tenant
        for tenant, loaded in by_tenant.values():
            assert loaded <= ({"1:k", "2:k"} if tenant == "org:a" else {"3:k"}), by_tenant
        # the host refuses to send one tenant's config to another's sandbox
        with pytest.raises(SandboxError):
            pool.tenants["org:b"][0].load_into("1:k", pool.plugins["1:k"])
    finally:
        await pool.stop()


async def test_at_the_cap_the_least_recently_used_idle_sandbox_is_closed_and_others_wait() -> None:
    pool = SandboxPool(1, HostServices(), max_alive=2)
    await pool.start()
    try:
        slow = (
            "import asyncio\n"
            "async def process_event(event, meta):\n    await asyncio.sleep(0.5)\n    return event\n"
        )
        for n in (1, 2, 3):
            pool.register(f"{n}:k", spec(), slow, tenant_context(n), f"org:{n}")
        await pool.call("1:k", "process_event", [[{}]], 5.0)
        await pool.call("2:k", "process_event", [[{}]], 5.0)
        [first] = pool.tenants["org:1"]
        # org 1's sandbox is the least recently used: org 3 takes its place
        [outcome] = await pool.call("3:k", "process_event", [[{"n": 3}]], 5.0)
        assert outcome.ok and outcome.value == {"n": 3}
        assert "org:1" not in pool.tenants and first.retiring
        # both sandboxes busy: org 1 waits for one to finish, then gets its own
        results = await asyncio.gather(
            pool.call("2:k", "process_event", [[{"n": 2}]], 5.0),
            pool.call("3:k", "process_event", [[{"n": 3}]], 5.0),
            pool.call("1:k", "process_event", [[{"n": 1}]], 5.0),
        )
        assert [r[0].value for r in results] == [{"n": 2}, {"n": 3}, {"n": 1}]
        assert pool.peak_alive == 2 and pool.slots_used <= 2
        assert all(s.tenant == f"org:{next(iter(s.loaded))[0]}" for s in pool.sandboxes)
    finally:
        await pool.stop()


async def test_an_idle_sandbox_is_closed_after_teardown_and_set_up_again_when_needed() -> None:
    services = HostServices()
    seen: list[str] = []
    services.register("record", lambda context, text: seen.append(text))
    pool = SandboxPool(1, services, idle_seconds=0.3)
    await pool.start()
    try:
        source = """
async def setup_plugin(meta):
    await meta._request("record", ["setup"])

async def teardown_plugin(meta):
    await meta._request("record", ["teardown"])

def process_event(event, meta):
    return event
"""
        pool.register("1:k", spec(), source, tenant_context(1), "org:1")
        assert (await pool.load("1:k")).ok
        await wait_for(lambda: not pool.sandboxes and pool.slots_used == 0)
        assert seen == ["setup", "teardown"]
        [outcome] = await pool.call("1:k", "process_event", [[{"a": 1}]], 5.0)
        assert outcome.ok and seen == ["setup", "teardown", "setup"]
    finally:
        await pool.stop()


async def test_a_request_for_a_config_the_sandbox_does_not_hold_is_refused_logged_and_counted() -> None:
    services = HostServices()
    served: list[int] = []
    services.register("storage.get", lambda context, key: served.append(context.plugin_config_id))
    pool = SandboxPool(1, services)
    await pool.start()
    try:
        forger = """
async def process_event(event, meta):
    for cell in meta._request.__closure__:
        if isinstance(cell.cell_contents, str):
            cell.cell_contents = event["victim"]
    try:
        await meta.storage.get("x")
        event["outcome"] = "served"
    except Exception as exc:
        event["outcome"] = [type(exc).__name__, str(exc)]
    return event
"""
        pool.register("1:own", spec(), forger, tenant_context(1), "org:a")
        pool.register("2:victim", spec(), ECHO, tenant_context(2), "org:b")
        assert (await pool.load("2:victim")).ok

        def refused() -> float:
            labels = {"reason": "foreign", "service": "storage.get"}
            return REGISTRY.get_sample_value("plugin_server_sandbox_requests_refused_total", labels) or 0.0

        before = refused()
        with structlog.testing.capture_logs() as logs:
            [outcome] = await pool.call("1:own", "process_event", [[{"victim": "2:victim"}]], 5.0)
        assert outcome.value["outcome"] == [
            "PermissionError",
            "This plugin config may not make requests from this sandbox",
        ]
        assert served == [] and refused() == before + 1
        [event] = [e for e in logs if e.get("security_event")]
        assert event["log_level"] == "warning"
        assert event["tenant"] == "org:a" and event["claimed_config"] == "'2:victim'"
        assert event["claimed_organization"] == "org:b"
    finally:
        await pool.stop()
