"""Historical export, host-side (plugins §3.9): sends a team's stored events to a plugin's
`exportEvents`, for Python and JS plugins alike.

The job `Export historical events` (the run button PostHog's UI shows; payload `dateFrom`,
`dateTo`) starts an export; the job `exportEventsFromTheBeginning` exports one page: up to 100
events of a 10-minute interval. Its state lives in the config's storage, so an export goes on
after a restart: `is_export_running`, `timestamp_cursor` (start of the current interval, ms),
`min_timestamp`, `max_timestamp` (ms, both inclusive) and `export_page` (offset and retries of
the page due, and the token of the one job allowed to export it).

Deliberate differences from the original, which forked its job chain (a retry enqueued the next
page again, beside the page job that already had), read past the upper bound (events the live
export also sends) and reported progress as all-empty or all-full:

- one page at a time: a page job enqueues exactly one follow-up, its own retry (RetryError or a
  read error; 3 s, 6 s, ... at most 15 retries, then the page is skipped with a log line) or the
  next page. A job whose token is not the due page's (a duplicate run after a crash) exports
  nothing, so no page is exported twice and none is skipped;
- the upper bound is inclusive and nothing after it is read; empty intervals are skipped with
  one query; empty pages are not handed to the plugin;
- the progress bar shows the share of the time range done, logged when a cell fills;
- a request while an export runs gets a log line saying so (and resumes it if its page job is
  over an hour late, i.e. lost); a bad `dateFrom`/`dateTo` is refused before anything is
  claimed, so it does not leave the export "running" for good.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import asyncpg
from prometheus_client import Counter

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY
from plugin_server.services.event_sources import EventSource, TimestampBounds
from plugin_server.services.plugin_host import JobRetry, PluginCallError, PluginConfigRef

START_JOB = "Export historical events"
PAGE_JOB = "exportEventsFromTheBeginning"
HISTORICAL_JOBS = (START_JOB, PAGE_JOB)

INTERVAL_MS = 10 * 60 * 1000
PAGE_SIZE = 100
MAX_RETRIES = 15
PROGRESS_CELLS = 20
# a page job this late has been lost (its config was off longer than the job queue retries a
# job): a new request resumes the export instead of being refused
STALLED_AFTER_MS = 3_600_000

RUNNING_KEY = "is_export_running"
CURSOR_KEY = "timestamp_cursor"
MIN_KEY = "min_timestamp"
MAX_KEY = "max_timestamp"
PAGE_KEY = "export_page"
STATE_KEYS = (RUNNING_KEY, CURSOR_KEY, MIN_KEY, MAX_KEY, PAGE_KEY)

HISTORICAL_PAGES = Counter(
    "plugin_server_historical_export_pages_total",
    "Pages of historical exports, by outcome (exported, retried, skipped)",
    ["outcome"],
    registry=REGISTRY,
)

log = get_logger(__name__)


@runtime_checkable
class HistoricalExportHost(Protocol):
    """What the historical export needs from the loaded plugins."""

    def config_ref(self, plugin_config_id: int) -> PluginConfigRef | None: ...

    async def export_events(self, plugin_config_id: int, events: Sequence[dict[str, Any]]) -> None:
        """Raises PluginCallError (retry=True for RetryError)."""
        ...

    async def record_error(self, plugin_config_id: int, error: PluginCallError) -> None: ...

    def write_log(self, plugin_config_id: int, message: str) -> None:
        """A SYSTEM/LOG entry in the config's plugin log."""
        ...


# (config, job type, payload, run at epoch ms)
EnqueueJob = Callable[[PluginConfigRef, str, dict[str, Any], int], Awaitable[None]]
# (config, metric, value): sum metrics
IncrementMetric = Callable[[PluginConfigRef, str, float], None]


# what both stores and Python's datetime can represent: 1970 (ClickHouse's DateTime) to 9999
MIN_DATE_MS, MAX_DATE_MS = 0, 253_402_300_799_000


class InvalidExportRequest(ValueError):
    pass


def parse_date(value: Any, name: str) -> int:
    """An ISO 8601 string (or epoch ms) as epoch ms; a date without a zone is UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if MIN_DATE_MS <= value <= MAX_DATE_MS:
            return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            ms = int(moment.timestamp() * 1000)
            if MIN_DATE_MS <= ms <= MAX_DATE_MS:
                return ms
    raise InvalidExportRequest(f"'{name}' should be an timestamp in ISO string format.")


def export_range(payload: Any, bounds: TimestampBounds) -> tuple[int, int]:
    """[first, last] ms of an export from the job's payload and the team's bounds at setup."""
    options = payload if isinstance(payload, Mapping) else {}
    if options.get("dateFrom"):
        first = parse_date(options["dateFrom"], "dateFrom")
    elif bounds.min_ms is not None:
        first = bounds.min_ms
    else:
        raise InvalidExportRequest(
            "Unable to determine the lower timestamp bound for the export automatically. "
            "Please specify a 'dateFrom' value."
        )
    if options.get("dateTo"):
        last = parse_date(options["dateTo"], "dateTo")
    elif bounds.max_ms is not None:
        last = bounds.max_ms
    else:
        raise InvalidExportRequest(
            "Unable to determine the upper timestamp bound for the export automatically. "
            "Please specify a 'dateTo' value."
        )
    if last < first:
        raise InvalidExportRequest("'dateTo' is before 'dateFrom': there is nothing to export.")
    return first, last


def progress_cells(cursor: int, first: int, last: int) -> int:
    """Filled cells of the progress bar: the share of [first, last] before the cursor."""
    if last <= first:
        return PROGRESS_CELLS if cursor > last else 0
    share = (cursor - first) / (last - first + 1)
    return max(0, min(PROGRESS_CELLS, int(share * PROGRESS_CELLS)))


def progress_bar(cells: int) -> str:
    percent = cells * 100 // PROGRESS_CELLS
    return f"Export progress: {'■' * cells}{'□' * (PROGRESS_CELLS - cells)} {percent}%"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class ExportState:
    """An export's storage, as one snapshot."""

    running: bool
    cursor: int
    first: int
    last: int
    offset: int
    retries: int
    token: str | None
    previous: str | None
    due: int  # epoch ms the page's job was to run at

    @property
    def end(self) -> int:
        """Exclusive end of the export: `last` is an event's own time, so it is included."""
        return self.last + 1


_SELECT_STATE = """
SELECT key, value FROM posthog_pluginstorage
WHERE plugin_config_id = $1 AND key = ANY($2::text[])
"""
_LOCK_STATE = _SELECT_STATE + " FOR UPDATE"
_UPSERT = """
INSERT INTO posthog_pluginstorage (plugin_config_id, key, value) VALUES ($1, $2, $3)
ON CONFLICT (plugin_config_id, key) DO UPDATE SET value = EXCLUDED.value
"""
_DELETE = "DELETE FROM posthog_pluginstorage WHERE plugin_config_id = $1 AND key = ANY($2::text[])"


def _truthy(text: str | None) -> bool:
    if text is None:
        return False
    try:
        return bool(json.loads(text))
    except ValueError:
        return bool(text)


def _number(text: str | None) -> int:
    try:
        return int(float(json.loads(text))) if text else 0
    except (ValueError, TypeError):
        return 0


def _state(rows: Sequence[asyncpg.Record]) -> ExportState | None:
    """None unless an export of this server is running (a bare `is_export_running` left by
    another server version, without its page, does not block a new export)."""
    values: dict[str, str | None] = {r["key"]: r["value"] for r in rows}
    if not _truthy(values.get(RUNNING_KEY)) or not values.get(PAGE_KEY):
        return None
    try:
        page = json.loads(values[PAGE_KEY] or "")
    except ValueError:
        return None
    if not isinstance(page, dict):
        return None
    return ExportState(
        running=True,
        cursor=_number(values.get(CURSOR_KEY)),
        first=_number(values.get(MIN_KEY)),
        last=_number(values.get(MAX_KEY)),
        offset=int(page.get("offset") or 0),
        retries=int(page.get("retries") or 0),
        token=page.get("token"),
        previous=page.get("previous"),
        due=int(page.get("due") or 0),
    )


class HistoricalExport:
    """Runs the two historical-export jobs of exporting plugin configs."""

    def __init__(
        self,
        pg: asyncpg.Pool,
        source: EventSource,
        host: HistoricalExportHost,
        enqueue_job: EnqueueJob,
        increment_metric: IncrementMetric,
        *,
        instance_id: str,
        retry_base_seconds: float = 3.0,
    ) -> None:
        self._pg = pg
        self.source = source
        self._host = host
        self._enqueue = enqueue_job
        self._metric = increment_metric
        self._instance_id = instance_id
        self._retry_base = retry_base_seconds
        # the team's event bounds when each config (generation) was loaded: plugins §3.9 setup
        self._bounds: dict[int, TimestampBounds] = {}

    def _log(self, plugin_config_id: int, message: str) -> None:
        self._host.write_log(plugin_config_id, f"({self._instance_id}) {message}")

    # ------------------------------------------------------------------ setup
    async def take_bounds(self, plugin_config_id: int, team_id: int) -> None:
        """Before an exporting config's setup: what "historical" means for it. Events stored
        later reach the plugin through the live export. Failing here does not stop the load:
        the bounds are read when an export starts instead."""
        try:
            self._bounds[plugin_config_id] = await self.source.bounds(team_id)
        except Exception as exc:
            self._bounds.pop(plugin_config_id, None)
            log.warning(
                "could not read the team's event time bounds",
                plugin_config_id=plugin_config_id,
                source=self.source.name,
                error=repr(exc),
            )

    def bounds(self, plugin_config_id: int) -> TimestampBounds | None:
        return self._bounds.get(plugin_config_id)

    # ------------------------------------------------------------------ jobs
    async def run_job(self, plugin_config_id: int, job_type: str, payload: Any) -> None:
        ref = self._host.config_ref(plugin_config_id)
        if ref is None:
            # not loaded (yet): the job queue runs the job again later
            raise JobRetry(f"plugin config {plugin_config_id} is not loaded")
        if job_type == START_JOB:
            await self.start(ref, payload)
        else:
            await self.export_page(ref, payload if isinstance(payload, Mapping) else {})

    async def start(self, ref: PluginConfigRef, payload: Any) -> None:
        bounds = self._bounds.get(ref.id) or await self.source.bounds(ref.team_id)
        try:
            first, last = export_range(payload, bounds)
        except InvalidExportRequest as exc:
            self._log(ref.id, str(exc))
            await self._host.record_error(ref.id, PluginCallError("Error", str(exc)))
            return
        token, now = secrets.token_hex(8), _now_ms()
        page = json.dumps({"token": token, "previous": None, "offset": 0, "retries": 0, "due": now})
        async with self._pg.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK_SPACE, ref.id)
            current = _state(await conn.fetch(_SELECT_STATE, ref.id, list(STATE_KEYS)))
            if current is None:
                await conn.execute(_DELETE, ref.id, list(STATE_KEYS))
                for key, value in (
                    (RUNNING_KEY, "true"),
                    (MIN_KEY, str(first)),
                    (MAX_KEY, str(last)),
                    (CURSOR_KEY, str(first)),
                    (PAGE_KEY, page),
                ):
                    await conn.execute(_UPSERT, ref.id, key, value)
        if current is not None:
            running = (
                f"events from {_iso(current.first)} to {_iso(current.last)}, now at {_iso(current.cursor)}"
            )
            if current.due + STALLED_AFTER_MS < now:
                await self._enqueue_page(ref, self._payload(current), current.token, current.retries)
                self._log(ref.id, f"An export had stalled ({running}). It is resumed instead.")
                return
            self._log(
                ref.id,
                f"An export is already running ({running}). This request is ignored; run it again "
                "once the running export is done.",
            )
            return
        try:
            await self._enqueue_page(ref, {"timestampCursor": first, "intraIntervalOffset": 0}, token, 0)
        except Exception:
            await self._pg.execute(_DELETE, ref.id, list(STATE_KEYS))
            raise
        self._log(ref.id, f"Starting export of events from {_iso(first)} to {_iso(last)}.")
        self._log(ref.id, progress_bar(0))

    async def export_page(self, ref: PluginConfigRef, payload: Mapping[str, Any]) -> None:
        state = _state(await self._pg.fetch(_SELECT_STATE, ref.id, list(STATE_KEYS)))
        token = payload.get("token")
        if state is None:
            return  # the export is over (or was never started by this server)
        if token != state.token:
            if token is not None and token == state.previous:
                # this job already moved the export on, but its server stopped before the job
                # was marked done: make sure the page it moved to has its job
                await self._enqueue_page(ref, self._payload(state), state.token, state.retries)
            return
        if state.cursor >= state.end:
            await self._finish(ref, state)
            return
        window_end = min(state.cursor + INTERVAL_MS, state.end)
        described = (
            f"events {state.offset}-{state.offset + PAGE_SIZE} from {_iso(state.cursor)} "
            f"to {_iso(window_end)}"
        )
        failure: str | None = None
        events: list[dict[str, Any]] = []
        try:
            events = await self.source.page(ref.team_id, state.cursor, window_end, state.offset, PAGE_SIZE)
        except Exception as exc:
            failure = f"could not read events: {exc!r}"
        if failure is None and events:
            if self._host.config_ref(ref.id) is None:
                raise JobRetry(f"plugin config {ref.id} is not loaded")
            try:
                await self._host.export_events(ref.id, events)
            except PluginCallError as error:
                if error.retry:
                    failure = f"{error.name}: {error.message}"
                else:
                    # not retried (as the original): the page is skipped and the error recorded
                    await self._host.record_error(ref.id, error)
                    HISTORICAL_PAGES.labels("skipped").inc()
                    self._log(ref.id, f"Failed processing {described}: {error.message}. Skipped.")
                    await self._advance(ref, state, len(events))
                    return
        if failure is not None:
            await self._retry(ref, state, described, failure)
            return
        if events:
            HISTORICAL_PAGES.labels("exported").inc()
            self._metric(ref, "events_exported", len(events))
            self._log(ref.id, f"Successfully processed {described}.")
        await self._advance(ref, state, len(events))

    # ------------------------------------------------------------------ moving on
    async def _retry(self, ref: PluginConfigRef, state: ExportState, described: str, failure: str) -> None:
        if state.retries >= MAX_RETRIES:
            HISTORICAL_PAGES.labels("skipped").inc()
            self._log(
                ref.id,
                f"Failed processing {described} after {MAX_RETRIES} retries ({failure}). "
                "Skipping these events.",
            )
            await self._advance(ref, state, PAGE_SIZE)
            return
        delay = self._retry_base * 2**state.retries
        HISTORICAL_PAGES.labels("retried").inc()
        self._log(ref.id, f"Failed processing {described}. Retrying in {delay:g}s")
        due = _now_ms() + int(delay * 1000)
        await self._move(ref, state, state.cursor, state.offset, state.retries + 1, due)

    async def _advance(self, ref: PluginConfigRef, state: ExportState, count: int) -> None:
        if count >= PAGE_SIZE:
            await self._move(ref, state, state.cursor, state.offset + PAGE_SIZE, 0, None)
            return
        cursor = state.cursor + INTERVAL_MS
        if cursor < state.end:
            try:
                first = await self.source.first_after(ref.team_id, cursor, state.end)
            except Exception:
                first = cursor  # read it page by page instead
            # skip the empty intervals, keeping intervals aligned on the export's start
            cursor = state.end if first is None else max(cursor, first - (first - state.first) % INTERVAL_MS)
        if cursor >= state.end:
            await self._finish(ref, state)
            return
        before = progress_cells(state.cursor, state.first, state.last)
        if await self._move(ref, state, cursor, 0, 0, None):
            after = progress_cells(cursor, state.first, state.last)
            if after != before:
                self._log(ref.id, progress_bar(after))

    async def _move(
        self,
        ref: PluginConfigRef,
        state: ExportState,
        cursor: int,
        offset: int,
        retries: int,
        run_at: int | None,
    ) -> bool:
        """Make (cursor, offset) the due page, if `state` still is, and enqueue its job."""
        token = secrets.token_hex(8)
        due = run_at if run_at is not None else _now_ms()
        page = {"token": token, "previous": state.token, "offset": offset, "retries": retries, "due": due}
        async with self._pg.acquire() as conn, conn.transaction():
            current = _state(await conn.fetch(_LOCK_STATE, ref.id, list(STATE_KEYS)))
            if current is None or current.token != state.token:
                return False
            await conn.execute(_UPSERT, ref.id, PAGE_KEY, json.dumps(page))
            await conn.execute(_UPSERT, ref.id, CURSOR_KEY, str(cursor))
        payload = {"timestampCursor": cursor, "intraIntervalOffset": offset}
        # if this fails, the job fails and runs again; it then finds its successor's page and
        # enqueues it (the `previous` token)
        await self._enqueue_page(ref, payload, token, retries, due)
        return True

    async def _finish(self, ref: PluginConfigRef, state: ExportState) -> None:
        async with self._pg.acquire() as conn, conn.transaction():
            current = _state(await conn.fetch(_LOCK_STATE, ref.id, list(STATE_KEYS)))
            if current is None or current.token != state.token:
                return
            await conn.execute(_DELETE, ref.id, [RUNNING_KEY, PAGE_KEY])
            await conn.execute(_UPSERT, ref.id, CURSOR_KEY, str(state.end))
        if progress_cells(state.cursor, state.first, state.last) < PROGRESS_CELLS:
            self._log(ref.id, progress_bar(PROGRESS_CELLS))
        self._log(ref.id, "Done exporting all events")

    @staticmethod
    def _payload(state: ExportState) -> dict[str, Any]:
        return {"timestampCursor": state.cursor, "intraIntervalOffset": state.offset}

    async def _enqueue_page(
        self,
        ref: PluginConfigRef,
        payload: dict[str, Any],
        token: str | None,
        retries: int,
        run_at: int | None = None,
    ) -> None:
        job = {**payload, "retriesPerformedSoFar": retries, "token": token}
        await self._enqueue(ref, PAGE_JOB, job, run_at if run_at is not None else _now_ms())


# pg_advisory_xact_lock key space for starting exports (one lock per plugin config id)
_LOCK_SPACE = 0x6869_7374
