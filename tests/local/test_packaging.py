"""The project installs as a package: `python -m plugin_server`, the `posthog_plugin` SDK and
`plugin_server.testing` work from any folder, sandbox and JS runtime included."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.local.cli import EXAMPLES, ROOT, author_env, json_lines

SOURCES = ["pyproject.toml", "README.md", "plugin_server", "sandbox", "posthog_plugin"]


def _copy_sources(work: Path) -> Path:
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, source / name)
    return source


def _pip_install(*args: str, cwd: Path, python: Path | None = None) -> None:
    """`pip install --no-deps ARGS`, into the environment of `python` when given."""
    # the build backend from this environment when it has one, else pip fetches it
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    target = ["--python", str(python)] if python is not None else []
    subprocess.run(
        [sys.executable, "-m", "pip", *target, "install", "-q", "--no-deps", *isolation, *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built and installed (not editable) into a folder of its own."""
    work = tmp_path_factory.mktemp("package")
    source = _copy_sources(work)
    target = work / "site"
    _pip_install("--target", str(target), ".", cwd=source)
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


def _make_install_editable_args() -> list[str]:
    """The arguments of the Makefile's `pip install ... -e .` of the project."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if "pip install" in line and " -e " in line:
            words = shlex.split(line)
            return words[words.index("install") + 1 :]
    raise AssertionError("the Makefile installs the project with pip install -e")


def test_the_editable_install_of_make_install_serves_plugin_authors_elsewhere(tmp_path: Path) -> None:
    """The Makefile's editable install of the project into a fresh environment (its dependencies
    from this one): the server, the SDK, pytest and mypy work on a new plugin in another folder."""
    source = _copy_sources(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _pip_install(*_make_install_editable_args(), cwd=source, python=python)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in author_env().items() if k != "PYTHONPATH"}

    def run(*args: str, cwd: Path = elsewhere) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )

    helped = run("-m", "plugin_server", "--help")
    assert helped.returncode == 0, helped.stderr
    imported = run("-c", "import posthog_plugin; print(posthog_plugin.__file__)")
    assert imported.stdout.strip() == str(source / "posthog_plugin" / "__init__.py"), imported.stderr
    assert run("-m", "plugin_server", "plugin", "new", "mine").returncode == 0
    typed = run("-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), "mine")
    assert typed.returncode == 0, typed.stdout + typed.stderr
    tested = run("-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", cwd=elsewhere / "mine")
    assert tested.returncode == 0, tested.stdout + tested.stderr
