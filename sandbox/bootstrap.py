"""The first code a sandbox runs: the host passes this file's text to `Interpreter.exec`, after
lines that set `CHANNEL_FD`, `OPTIONS` and `PROJECT_ROOT`, then runs `main(CHANNEL_FD, OPTIONS)`.

The host compiles the `sandbox` package once and sends every sandbox the marshalled code objects
as the channel's first frame: a fresh sub-interpreter then imports its runtime without reading
or compiling sources, which matters when bytecode is not cached (PYTHONDONTWRITEBYTECODE,
read-only images). Modules not in the bundle are imported the normal way.
"""

import marshal
import os
import sys
from _frozen_importlib import ModuleSpec
from collections.abc import Sequence
from types import CodeType, ModuleType

# asyncio imports ssl only when it is there: plugins may not use it, so a sandbox does without
# (a few milliseconds and a few hundred kB less per sandbox).
sys.modules["ssl"] = None  # type: ignore[assignment]


class _BundleFinder:
    """Answers imports of the bundled modules from their code objects."""

    def __init__(self, bundle: dict[str, tuple[str, bool, CodeType]]) -> None:
        self.bundle = bundle

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        entry = self.bundle.get(name)
        if entry is None:
            return None
        filename, is_package, _ = entry
        spec = ModuleSpec(name, self, origin=filename, is_package=is_package)  # type: ignore[arg-type]
        if is_package:
            spec.submodule_search_locations = [os.path.dirname(filename)]
        spec.has_location = True
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        filename, _, code = self.bundle[module.__name__]
        module.__file__ = filename
        exec(code, module.__dict__)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("the host closed the channel")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


_length = int.from_bytes(_read_exactly(CHANNEL_FD, 4), "big")  # type: ignore[name-defined]  # noqa: F821
sys.path.insert(0, PROJECT_ROOT)  # type: ignore[name-defined]  # noqa: F821
sys.meta_path.insert(0, _BundleFinder(marshal.loads(_read_exactly(CHANNEL_FD, _length))))  # type: ignore[name-defined]  # noqa: F821

from sandbox.guest import main  # noqa: E402, F401
