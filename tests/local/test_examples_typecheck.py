"""The examples type-check against the `posthog_plugin` SDK, and a type error in one is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from plugin_server.local.scaffold import new_plugin
from tests.local.cli import EXAMPLES, ROOT


def _mypy(*paths: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), *map(str, paths)],
        cwd=ROOT,  # the project's mypy settings; posthog_plugin and plugin_server resolve from here
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mypy_passes_on_the_examples(tmp_path: Path) -> None:
    result = _mypy(EXAMPLES, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_mypy_catches_a_type_error_in_an_example(tmp_path: Path) -> None:
    copy = tmp_path / "property-filter-broken"
    shutil.copytree(EXAMPLES / "property-filter", copy)
    plugin = copy / "property_filter.py"
    text = plugin.read_text()
    # properties must be a dict, a metric name a str, and meta has no `settings`
    broken = text.replace('event["properties"] = properties', 'event["properties"] = len(properties)')
    broken = broken.replace('meta.config.get("drop_events")', "meta.settings")
    assert broken != text
    plugin.write_text(broken)
    (copy / "test_property_filter.py").unlink()
    result = _mypy(copy, cache=tmp_path / "cache")
    assert result.returncode == 1, result.stdout
    assert 'Value of "properties" has incompatible type "int"' in result.stdout
    assert '"Meta" has no attribute "settings"' in result.stdout


def test_mypy_passes_on_a_new_plugin(tmp_path: Path) -> None:
    folder = new_plugin("typed-plugin", "python", tmp_path)
    result = _mypy(folder, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr
