"""The `posthog_plugin` SDK: the package plugin authors type-check against is the module the
sandbox provides, and its types describe what the sandbox's `meta` really has."""

from __future__ import annotations

import inspect
import os
from typing import Any

import asyncpg
import pytest

import posthog_plugin
from sandbox import meta as sandbox_meta
from tests.plugins.conftest import RunnerFactory, add_python_plugin, default_event, log_rows

# Each Protocol of the SDK and the sandbox class that implements it.
IMPLEMENTATIONS: list[tuple[type, type]] = [
    (posthog_plugin.Meta, sandbox_meta.Meta),
    (posthog_plugin.Cache, sandbox_meta.Cache),
    (posthog_plugin.Storage, sandbox_meta.Storage),
    (posthog_plugin.Cursor, sandbox_meta.Cursor),
    (posthog_plugin.Utils, sandbox_meta.Utils),
    (posthog_plugin.Attachment, sandbox_meta.Attachment),
    (posthog_plugin.Metric, sandbox_meta.Metric),
    (posthog_plugin.Metrics, sandbox_meta.Metrics),
    (posthog_plugin.JobRunner, sandbox_meta.JobRunner),
    (posthog_plugin.Jobs, sandbox_meta.Jobs),
    (posthog_plugin.Response, sandbox_meta.Response),
    (posthog_plugin.Geoip, sandbox_meta.Geoip),
    (posthog_plugin.PosthogApi, sandbox_meta.PosthogApi),
    (posthog_plugin.Posthog, sandbox_meta.Posthog),
    (posthog_plugin.Console, sandbox_meta.Console),
]


def _public_members(protocol: type) -> list[str]:
    names = set()
    for klass in protocol.__mro__:
        if klass.__module__ != "posthog_plugin":
            continue
        names.update(vars(klass).get("__annotations__", {}))
        names.update(n for n in vars(klass) if not n.startswith("_") or n in ("__getitem__", "__getattr__"))
    return sorted(names)


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _parameters(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(("protocol", "implementation"), IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_every_sdk_member_exists_in_the_sandbox_with_the_same_parameters(
    protocol: type, implementation: type
) -> None:
    for name in _public_members(protocol):
        declared = getattr(protocol, name, None)
        if callable(declared) and not isinstance(declared, property) and name not in ("__getattr__",):
            actual = getattr(implementation, name, None)
            assert actual is not None, f"{implementation.__name__}.{name} is missing"
            assert _parameters(actual) == _parameters(declared), f"{implementation.__name__}.{name}"
        elif name in ("increment", "max", "min"):  # one of them is set per declared metric kind
            assert implementation is sandbox_meta.Metric
            assert name in sandbox_meta.METRIC_OPERATIONS.values()
        else:
            # an attribute: set in __init__, a dataclass field or a property
            source = inspect.getsource(implementation)
            assert f"self.{name}" in source or f"{name}:" in source or f"def {name}(" in source, (
                f"{implementation.__name__}.{name} is missing"
            )


def test_sandbox_errors_are_the_sdk_classes() -> None:
    assert sandbox_meta.RetryError is posthog_plugin.RetryError
    assert sandbox_meta.IllegalOperationError is posthog_plugin.IllegalOperationError


def test_meta_keys_are_documented_members() -> None:
    members = set(_public_members(posthog_plugin.Meta))
    for key in sandbox_meta.Meta.KEYS:
        assert (key if key != "global" else "global_") in members


def test_the_package_ships_type_information() -> None:
    package_dir = os.path.dirname(posthog_plugin.__file__)
    assert os.path.exists(os.path.join(package_dir, "py.typed"))


async def test_the_sandbox_provides_this_very_module(
    pg: asyncpg.Pool, team: int, plugin_runner: RunnerFactory
) -> None:
    await add_python_plugin(
        pg,
        """
        import posthog_plugin
        from posthog_plugin import Meta, PluginEvent, RetryError, console

        def process_event(event: PluginEvent, meta: Meta) -> PluginEvent | None:
            event["properties"]["sdk_file"] = posthog_plugin.__file__
            event["properties"]["sdk_names"] = sorted(posthog_plugin.__all__)
            event["properties"]["retry_is_exception"] = issubclass(RetryError, Exception)
            console.info("typed hello")
            return event
        """,
    )
    async with plugin_runner() as runner:
        [result] = await runner.process_events([default_event()])
        await runner.logs.flush()
        rows = await log_rows(pg)
    assert result is not None
    properties = result["properties"]
    assert _same_file(properties["sdk_file"], posthog_plugin.__file__)
    assert properties["sdk_names"] == sorted(posthog_plugin.__all__)
    assert properties["retry_is_exception"] is True
    assert ("CONSOLE", "INFO", "typed hello") in [(r["source"], r["type"], r["message"]) for r in rows]
