"""Records files the test session opens beside the checkout: the repository must carry
everything its tests read, so a fresh clone on its own passes (a sibling folder such as a
shared/ beside the checkout exists on some machines only)."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


class OutsideReads:
    """An audit hook's state: paths opened inside the folders and files that stood beside the
    checkout when the session started. The interpreter and its packages are exempt, wherever
    the virtual environment lives."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = os.path.normpath(root)
        parent = os.path.dirname(self.root)
        names = os.listdir(parent) if os.path.isdir(parent) else []
        self.siblings = tuple(os.path.join(parent, n) for n in names if os.path.join(parent, n) != self.root)
        exempt = {sys.prefix, sys.base_prefix, *sysconfig.get_paths().values()}
        self.exempt = tuple(os.path.normpath(p) for p in exempt if p)
        self.paths: list[str] = []

    def is_outside(self, path: str) -> bool:
        full = os.path.normpath(os.path.join(os.getcwd(), path))
        if not any(_within(full, s) for s in self.siblings):
            return False
        return not any(_within(full, e) for e in self.exempt)

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not args:
            return
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str) and self.is_outside(path):
            self.paths.append(path)
