"""`plugin new`: a plugin folder made from the templates beside this file, with a test that
passes as made."""

from __future__ import annotations

import os
import re
from pathlib import Path

LANGUAGES = ("python", "js")
TEMPLATES = Path(__file__).parent / "templates"


class ScaffoldError(ValueError):
    pass


def slug(name: str) -> str:
    """A name usable in file names and Python module names."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def new_plugin(name: str, language: str = "python", parent: str | os.PathLike[str] = ".") -> Path:
    if language not in LANGUAGES:
        raise ScaffoldError(f"--lang must be one of {', '.join(LANGUAGES)}, not {language!r}")
    if not slug(name) or os.sep in name or (os.altsep and os.altsep in name):
        raise ScaffoldError(f"{name!r} cannot be a plugin name: use letters, digits, '-' or '_'")
    target = Path(parent) / name
    if target.exists():
        raise ScaffoldError(f"{target} already exists")
    target.mkdir(parents=True)
    for template in sorted((TEMPLATES / language).glob("*.tmpl")):
        file_name = template.name.removesuffix(".tmpl")
        if file_name == "test_plugin.py":
            file_name = f"test_{slug(name)}.py"  # unique, so several plugins' tests run together
        text = template.read_text(encoding="utf-8").replace("__NAME__", name)
        (target / file_name).write_text(text, encoding="utf-8")
    return target
