"""Running `python -m plugin_server plugin ...` as a plugin author does: another folder, the
project on PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def author_env(**values: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST", "KAFKA_", "DATABASE_URL", "REDIS_URL", "TASK_TIMEOUT"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(values)
    return env


def plugin_cli(
    *args: str, cwd: Path, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plugin_server", "plugin", *args],
        cwd=cwd,
        env=env or author_env(),
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
