"""Stops plugin calls that run past their deadline or grow memory past the sandbox's ceiling.

A thread in the sub-interpreter checks active calls every few milliseconds. When one is overdue
(or the process grew by more than the ceiling since it started), it switches on sys.monitoring
events for this interpreter; the callback, running on the sandbox's loop thread, raises
TimeoutError / MemoryError inside the offending call. Events are off whenever nothing is overdue,
so normal calls pay nothing. Code blocked inside C (time.sleep, a huge regex) cannot be
interrupted from here: the host replaces such a sandbox (see plugin_server/plugins/pool.py).
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TOOL_ID = 4  # ids 0-2 and 5 are conventionally taken by debuggers, coverage, profilers, optimizers
_EVENTS = sys.monitoring.events
# Faulting in memory runs at a few GB/s at best: a call shorter than this cannot have grown the
# process by a ceiling of 16 MB or more, so it is not sampled when it ends.
MIN_SECONDS_TO_FILL_LIMIT = 0.005
TRIP_EVENTS = _EVENTS.LINE | _EVENTS.JUMP | _EVENTS.PY_START | _EVENTS.PY_RETURN | _EVENTS.CALL


def plural_seconds(seconds: float) -> str:
    shown = f"{seconds:g}"
    return f"{shown} second" if seconds == 1 else f"{shown} seconds"


@dataclass(slots=True, eq=False)
class CallRecord:
    timeout: float
    deadline: float
    rss_base: int
    peak_base: int
    started: float = 0.0
    timed_out: bool = False
    over_memory: bool = False
    done: bool = field(default=False)


current_call: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar("current_call", default=None)


class Watchdog:
    def __init__(self, memory_limit_bytes: int, exempt_dirs: Iterable[str], tick: float = 0.01) -> None:
        self.memory_limit = memory_limit_bytes
        self.tick = tick
        self.active: set[CallRecord] = set()
        self.loop_thread = threading.get_ident()
        self._exempt = tuple(os.path.realpath(d) + os.sep for d in exempt_dirs)
        # kept here: the sandbox later takes these away from plugin code (guard.disarm_process_functions)
        self._pread, self._close = os.pread, os.close
        self._status = os.open("/proc/self/status", os.O_RDONLY)
        self.last_rss, self.last_peak = self.sample_rss()
        self._wake = threading.Event()
        self._stopped = False
        self._events_on = False
        self.sync_record: CallRecord | None = None
        sys.monitoring.use_tool_id(TOOL_ID, "plugin-sandbox-watchdog")
        for event in (_EVENTS.LINE, _EVENTS.JUMP, _EVENTS.PY_START, _EVENTS.PY_RETURN, _EVENTS.CALL):
            sys.monitoring.register_callback(TOOL_ID, event, self._on_event)
        self._thread = threading.Thread(target=self._run, name="sandbox-watchdog")
        self._thread.start()

    def sample_rss(self) -> tuple[int, int]:
        """(resident, peak resident) bytes of the process. The peak catches an allocation that
        came and went between two samples (the sampling thread waits for the GIL meanwhile)."""
        text = self._pread(self._status, 4096, 0)
        return _kilobytes(text, b"VmRSS:") * 1024, _kilobytes(text, b"VmHWM:") * 1024

    def _grown(self, record: CallRecord, rss: int, peak: int) -> int:
        return max(rss - record.rss_base, peak - record.peak_base)

    # -- loop thread side
    def begin(self, timeout: float) -> tuple[CallRecord, contextvars.Token[CallRecord | None]]:
        record = CallRecord(
            timeout=timeout,
            deadline=time.monotonic() + timeout,
            started=time.monotonic(),
            rss_base=self.last_rss,
            peak_base=self.last_peak,
        )
        was_idle = not self.active
        self.active.add(record)
        if was_idle:
            self._wake.set()
        return record, current_call.set(record)

    def check_memory_after(self, record: CallRecord) -> None:
        """Fail a call that finished before the sampler saw it over the ceiling. Only calls that
        ran long enough to fault in that much memory pay for the sample."""
        if time.monotonic() - record.started < MIN_SECONDS_TO_FILL_LIMIT:
            return
        if record.over_memory or self._grown(record, *self.sample_rss()) > self.memory_limit:
            raise MemoryError(self.memory_message())

    def memory_message(self) -> str:
        return f"Plugin exceeded the sandbox memory limit of {self.memory_limit // (1024 * 1024)} MB"

    def begin_sync(self, timeout: float) -> CallRecord:
        """Like begin, for a plain function run right here: nothing else runs on the loop
        meanwhile, so the record is kept on the watchdog instead of in a context variable."""
        now = time.monotonic()
        record = CallRecord(timeout, now + timeout, self.last_rss, self.last_peak, now)
        if not self.active:
            self._wake.set()
        self.active.add(record)
        self.sync_record = record
        return record

    def end_sync(self, record: CallRecord) -> None:
        record.done = True
        self.sync_record = None
        self.active.discard(record)
        if self._events_on:
            self._maybe_disarm()

    def _maybe_disarm(self) -> None:
        if self._events_on and not any(r.timed_out or r.over_memory for r in self.active):
            self._events_on = False
            sys.monitoring.set_events(TOOL_ID, 0)

    def end(self, record: CallRecord, token: contextvars.Token[CallRecord | None]) -> None:
        record.done = True
        self.active.discard(record)
        current_call.reset(token)
        self._maybe_disarm()

    def _on_event(self, code: Any, *args: Any) -> Any:
        if threading.get_ident() != self.loop_thread:
            return None
        record = self.sync_record or current_call.get()
        if record is None or record.done or code.co_filename.startswith(self._exempt):
            return None
        if record.over_memory:
            if self._grown(record, *self.sample_rss()) > self.memory_limit:
                raise MemoryError(self.memory_message())
            record.over_memory = False
        if record.timed_out:
            raise TimeoutError(
                f"Script execution timed out after looping for {plural_seconds(record.timeout)}"
            )
        return None

    # -- watchdog thread side
    def _run(self) -> None:
        while not self._stopped:
            if not self.active:
                self._wake.wait()
                self._wake.clear()
                self.last_rss, self.last_peak = self.sample_rss()
                continue
            time.sleep(self.tick)
            rss, peak = self.last_rss, self.last_peak = self.sample_rss()
            now = time.monotonic()
            trip = False
            for record in list(self.active):
                if not record.timed_out and now > record.deadline:
                    record.timed_out = True
                    trip = True
                if not record.over_memory and self._grown(record, rss, peak) > self.memory_limit:
                    record.over_memory = True
                    trip = True
            if trip and not self._events_on:
                self._events_on = True
                sys.monitoring.set_events(TOOL_ID, TRIP_EVENTS)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join()
        sys.monitoring.set_events(TOOL_ID, 0)
        sys.monitoring.free_tool_id(TOOL_ID)
        self._close(self._status)


def _kilobytes(status: bytes, field_name: bytes) -> int:
    start = status.find(field_name)
    if start < 0:
        return 0
    return int(status[start + len(field_name) : status.index(b"kB", start)].strip())
