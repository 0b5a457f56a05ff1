"""Garbage collector settings for a long-running ingestion process.

Everything built while starting (modules, caches, compiled plugins' host objects) lives as long
as the process; `gc.freeze()` moves it out of the collector's reach, so a full collection walks
only what batches allocate. A batch allocates tens of thousands of short-lived containers (the
events' dicts), which would otherwise run a young collection every 2,000 allocations and push
batch data into the older generations, each of whose collections walks every object there.
Reference counting frees nearly all of it anyway; the collector only has cycles to find.
"""

from __future__ import annotations

import gc

# Allocations between young collections (CPython's default is 2,000), then how many young
# (resp. middle) collections before a middle (resp. full) one.
YOUNG_THRESHOLD = 50_000
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 100


def tune_garbage_collector() -> None:
    """Call once start-up has built its long-lived objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
