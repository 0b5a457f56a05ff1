"""Finds the project's shared documents (spec, schema): a `shared/` folder beside the checkout."""

from __future__ import annotations

from pathlib import Path


def shared_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared"
        if (candidate / "schema" / "posthog.sql").exists():
            return candidate
    raise FileNotFoundError("no shared/ folder with schema/posthog.sql above " + str(here))
