"""The repository carries what its tests read: a read beside the checkout fails the session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.conftest import OUTSIDE_READS
from tests.fixtures import FIXTURES
from tests.outside_reads import ROOT, OutsideReads


def _checkout_with_a_sibling(tmp_path: Path) -> Path:
    (tmp_path / "repo" / "tests").mkdir(parents=True)
    (tmp_path / "shared" / "schema").mkdir(parents=True)
    return tmp_path / "repo"


def test_a_sibling_folder_of_the_checkout_is_outside(tmp_path: Path) -> None:
    reads = OutsideReads(_checkout_with_a_sibling(tmp_path))
    reads.audit("open", (str(tmp_path / "shared" / "schema" / "posthog.sql"), "r", 0))
    reads.audit("open", (os.fsencode(tmp_path / "shared" / "spec.md"), "r", 0))
    reads.audit("open", (str(tmp_path / "repo" / ".." / "shared"), "r", 0))
    assert reads.paths == [
        str(tmp_path / "shared" / "schema" / "posthog.sql"),
        str(tmp_path / "shared" / "spec.md"),
        str(tmp_path / "repo" / ".." / "shared"),
    ]


def test_the_checkout_the_interpreter_and_system_files_are_inside(tmp_path: Path) -> None:
    reads = OutsideReads(_checkout_with_a_sibling(tmp_path))
    for path in (tmp_path / "repo" / "tests" / "x.py", Path(sys.prefix) / "lib", Path("/etc/hosts")):
        reads.audit("open", (str(path), "r", 0))
    reads.audit("open", (str(tmp_path / "made-later"), "w", 0))  # not there when the session began
    reads.audit("open", (3, "r", 0))  # a descriptor, not a path
    reads.audit("exec", (str(tmp_path / "shared"),))
    assert reads.paths == []


def test_the_session_watches_its_own_reads() -> None:
    assert OUTSIDE_READS.root == str(ROOT)
    assert (FIXTURES / "posthog.sql").read_text().count("CREATE TABLE") > 10
    assert OUTSIDE_READS.paths == []
