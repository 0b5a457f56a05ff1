"""How fast this machine runs plain Python right now, so figures taken on different machines (or
the same shared machine at different times) can be compared: benchmarks print it beside theirs."""

from __future__ import annotations

import time


def _workload() -> int:
    # The kind of work the pipeline does per event: dict look-ups and stores, small strings.
    total = 0
    record = {"event": "$pageview", "distinct_id": "user", "team_id": 2}
    for n in range(200_000):
        copy = dict(record)
        copy["n"] = n
        total += len(copy.get("event", "")) + copy["team_id"]
    return total


def reference_ms(runs: int = 5) -> float:
    """Best time of a fixed pure-Python workload, in ms."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        _workload()
        best = min(best, time.perf_counter() - started)
    return best * 1000
