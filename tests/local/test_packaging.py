"""The project installs as a package: `python -m plugin_server`, the `posthog_plugin` SDK and
`plugin_server.testing` work from any folder, sandbox and JS runtime included."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local.cli import EXAMPLES, ROOT, author_env, json_lines

SOURCES = ["pyproject.toml", "README.md", "plugin_server", "sandbox", "posthog_plugin"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built and installed (not editable) into a folder of its own."""
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, source / name)
    target = work / "site"
    # the build backend from this environment when it has one, else pip fetches it
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation, "--target", str(target), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def _run(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=author_env(PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_and_sdk_work_from_another_folder(installed: Path, tmp_path: Path) -> None:
    helped = _run(["-m", "plugin_server", "--help"], tmp_path, installed)
    assert helped.returncode == 0, helped.stderr
    assert "python -m plugin_server plugin --help" in helped.stdout
    imported = _run(
        ["-c", "import posthog_plugin, plugin_server.testing; print(posthog_plugin.__file__)"],
        tmp_path,
        installed,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == str(installed / "posthog_plugin" / "__init__.py")
    assert (installed / "posthog_plugin" / "py.typed").exists()
    assert (installed / "plugin_server" / "py.typed").exists()


@pytest.mark.parametrize("example", ["property-filter", "typescript-utm-tagger"])
def test_installed_plugin_run_loads_python_and_typescript_plugins(
    installed: Path, tmp_path: Path, example: str
) -> None:
    folder = EXAMPLES / example
    result = _run(
        ["-m", "plugin_server", "plugin", "run", str(folder), "--events", str(folder / "events.jsonl")],
        tmp_path,
        installed,
    )
    assert result.returncode == 0, result.stderr
    assert len(json_lines(result.stdout)) >= 2


def test_installed_plugin_new_makes_a_plugin_whose_test_passes(installed: Path, tmp_path: Path) -> None:
    made = _run(["-m", "plugin_server", "plugin", "new", "packaged"], tmp_path, installed)
    assert made.returncode == 0, made.stderr
    pytest_args = ["-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    tested = _run(pytest_args, tmp_path / "packaged", installed)
    assert tested.returncode == 0, tested.stdout + tested.stderr
