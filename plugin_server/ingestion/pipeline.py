"""Postgres-mode ingestion of a batch: plugins, then every event's effects written in one
transaction (spec/ingestion.md §2). An event that cannot be ingested is dead-lettered with its
reason and the rest of the batch is saved; only infrastructure failures raise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from prometheus_client import Counter, Histogram

from plugin_server.config import Settings
from plugin_server.db.errors import is_outage
from plugin_server.ingestion import outbox
from plugin_server.ingestion.actions import ActionCache, MatchInput, match_actions
from plugin_server.ingestion.api import EventPluginRunner
from plugin_server.ingestion.dead_letter import DeadLetterQueue
from plugin_server.ingestion.definitions import DefinitionStore, NewDefinitions
from plugin_server.ingestion.elements import InvalidElements
from plugin_server.ingestion.groups import GroupTypeStore
from plugin_server.ingestion.hooks import HookSender
from plugin_server.ingestion.person_changes import EVENT_DATA_ERRORS, apply_person_changes
from plugin_server.ingestion.persons import SeenDistinctIds, fetch_persons
from plugin_server.ingestion.prepare import (
    SNAPSHOT_EVENT,
    PreparedEvent,
    UnknownTeam,
    finish_properties,
    prepare_event,
    team_id_of,
)
from plugin_server.ingestion.properties import InvalidEvent
from plugin_server.ingestion.queries import (
    MARK_TEAM_INGESTED,
    PRUNE_REMEMBERED_MESSAGES,
    REMEMBER_MESSAGES,
    SELECT_COHORT_MEMBERS,
)
from plugin_server.ingestion.teams import OrganizationCache, Team, TeamCache
from plugin_server.ingestion.timestamps import InvalidTimestamp
from plugin_server.ingestion.types import IncomingEvent, Outcome, PluginEvent
from plugin_server.ingestion.writers import EventWriter, PostgresEventWriter
from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY

log = get_logger(__name__)

EVENTS_INGESTED = Counter(
    "ingestion_events_total", "Events taken through ingestion, by outcome", ["outcome"], registry=REGISTRY
)
EVENTS_FAILED = Counter(
    "ingestion_events_failed_total",
    "Events that could not be ingested and were dead-lettered, by reason",
    ["reason"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "ingestion_batch_seconds", "Time to ingest one batch (plugins included)", registry=REGISTRY
)

STAGE_INGESTION = "plugin_server_ingest_event"  # the original's DLQ error_location
# Errors that belong to one event's content; anything else escaping a step is a bug or an outage.
EVENT_ERRORS: tuple[type[Exception], ...] = (
    InvalidEvent,
    InvalidTimestamp,
    InvalidElements,
    UnknownTeam,
    *EVENT_DATA_ERRORS,
)


class Publisher(Protocol):
    async def __call__(self, messages: list[Any]) -> None: ...


class InvalidContent(InvalidEvent):
    """A step failed on what one event contains, in a way no check foresaw."""


def _content_error(error: Exception) -> Exception:
    if isinstance(error, EVENT_ERRORS):
        return error
    return InvalidContent(f"event content not processable: {type(error).__name__}: {error}"[:2000])


def _reason(error: BaseException) -> str:
    if isinstance(error, UnknownTeam):
        return "unknown_team"
    if isinstance(error, InvalidTimestamp):
        return "invalid_timestamp"
    if isinstance(error, asyncpg.PostgresError):
        return "database_error"
    if isinstance(error, InvalidContent):
        return "invalid_content"
    if isinstance(error, EVENT_ERRORS):
        return "invalid_event"
    return "unexpected_error"


async def _skip_committed(conn: asyncpg.Connection, items: list[PreparedEvent]) -> list[PreparedEvent]:
    """Remember the items' messages as committed (with this transaction) and return the items to
    write: those whose message was not committed before. A message being committed by another
    transaction meanwhile is waited for (its row is locked), then skipped."""
    ids = [item.message_id for item in items if item.message_id is not None]
    if not ids:
        return items
    fresh = {row[0] for row in await conn.fetch(REMEMBER_MESSAGES, ids)}
    kept = []
    for item in items:
        item.duplicate = item.message_id is not None and item.message_id not in fresh
        if not item.duplicate:
            fresh.discard(item.message_id)  # the same message twice in one batch: written once
            kept.append(item)
    return kept


@dataclass(slots=True)
class _Failure:
    position: int
    error: BaseException


# Events prepared between two yields to the event loop, so that the previous batch's database
# round trips go on while the next batch is prepared.
_PREPARE_SLICE = 16
PRUNE_SECONDS = 600.0


@dataclass(slots=True)
class PreparedBatch:
    """A batch after the plugins and preparation, before anything of it is written."""

    batch: Sequence[IncomingEvent]
    events: list[PluginEvent | None]
    prepared: list[PreparedEvent]
    failures: list[_Failure]
    outcomes: list[Outcome]
    seconds: float  # spent preparing


class PostgresIngestor:
    """`Ingestor` for Postgres mode (KAFKA_ENABLED=false). `start` loads the action cache when it is
    the ingestor's own (a shared one is loaded by `ActionCacheRefresh`); `stop` lets fired hooks finish."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        plugins: EventPluginRunner,
        dead_letters: DeadLetterQueue,
        *,
        actions: ActionCache | None = None,
        hooks: HookSender | None = None,
        writer: EventWriter | None = None,
        teams: TeamCache | None = None,
        publish: Publisher | None = None,
    ) -> None:
        self._pool = pool
        self._plugins = plugins
        self._dead_letters = dead_letters
        self._max_bytes = settings.ingestion_max_event_bytes
        self.teams = teams or TeamCache(pool)
        self.organizations = OrganizationCache(pool)
        self._owns_actions = actions is None
        self.actions = actions or ActionCache(pool)
        self.hooks = hooks or HookSender(
            pool, self.teams, self.organizations, timeout_seconds=settings.hook_timeout_seconds
        )
        self.group_types = GroupTypeStore(pool)
        self.definitions = DefinitionStore(pool)
        self.seen = SeenDistinctIds(settings.distinct_id_lru_size)
        self.writer = writer or PostgresEventWriter(self.group_types)
        # Kafka mode: what a transaction emitted (outbox) is handed over once it committed.
        self._publish = publish
        self._pruning: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._owns_actions:
            await self.actions.reload_all()
        self._pruning = asyncio.create_task(self._prune_remembered(), name="prune-remembered-messages")

    async def stop(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            await asyncio.gather(self._pruning, return_exceptions=True)
        await self.hooks.stop()

    async def prune_remembered(self) -> int:
        """Forget committed messages after a day (a re-delivery comes within minutes). Returns
        how many were forgotten."""
        status = await self._pool.execute(PRUNE_REMEMBERED_MESSAGES)
        return int(status.rsplit(" ", 1)[-1])

    async def _prune_remembered(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_SECONDS)
            try:
                log.info("pruned remembered messages", count=await self.prune_remembered())
            except Exception as error:  # an outage: the next round prunes
                log.warning("pruning remembered messages failed", error=repr(error))

    async def ingest(self, batch: Sequence[IncomingEvent]) -> list[Outcome]:
        return await self.commit(await self.prepare(batch))

    async def prepare(self, batch: Sequence[IncomingEvent]) -> PreparedBatch:
        """Plugins and preparation: no event is saved (a consumer may run this for the next batch
        while the previous one commits)."""
        started = time.perf_counter()
        outcomes = [Outcome.INGESTED] * len(batch)
        events = await self._run_plugins(batch, outcomes)
        failures: list[_Failure] = []
        prepared = await self._prepare(batch, events, failures)
        return PreparedBatch(batch, events, prepared, failures, outcomes, time.perf_counter() - started)

    async def commit(self, staged: PreparedBatch) -> list[Outcome]:
        """Write a prepared batch; batches must be committed in order, one at a time."""
        started = time.perf_counter()
        batch, events, prepared, outcomes = staged.batch, staged.events, staged.prepared, staged.outcomes
        # Dead-letter what failed before writing: should that fail, nothing of the batch is saved
        # yet and a retry of the batch makes no duplicates.
        await self._dead_letter_all(batch, events, staged.failures, outcomes)
        if prepared:
            failures: list[_Failure] = []
            await self._write(prepared, failures)
            for item in prepared:
                if item.duplicate:
                    outcomes[item.position] = Outcome.DUPLICATE
            await self._dead_letter_all(batch, events, failures, outcomes)
        try:
            for item in prepared:
                if outcomes[item.position] is Outcome.INGESTED and item.matched:
                    self.hooks.fire(item.view, item.person, item.matched)
            survivors = [
                event
                for event, outcome in zip(events, outcomes, strict=True)
                if event is not None and outcome is not Outcome.DUPLICATE
            ]
            if survivors:
                self._plugins.on_events_ingested(survivors)
        except Exception:
            # The batch is saved: a failure to hand it on must not have it ingested again.
            log.exception("handing_on_ingested_events_failed")
        for outcome in Outcome:
            if count := outcomes.count(outcome):
                EVENTS_INGESTED.labels(outcome.value).inc(count)
        BATCH_SECONDS.observe(staged.seconds + time.perf_counter() - started)
        return outcomes

    # -- steps

    async def _run_plugins(
        self, batch: Sequence[IncomingEvent], outcomes: list[Outcome]
    ) -> list[PluginEvent | None]:
        events: list[PluginEvent | None] = [incoming.event for incoming in batch]
        positions = [i for i, e in enumerate(events) if e is not None and e.get("event") != SNAPSHOT_EVENT]
        if positions:
            processed = await self._plugins.process_events([batch[i].event for i in positions])
            for position, event in zip(positions, processed, strict=True):
                events[position] = event
                if event is None:
                    outcomes[position] = Outcome.DROPPED
        return events

    async def _prepare(
        self, batch: Sequence[IncomingEvent], events: Sequence[PluginEvent | None], failures: list[_Failure]
    ) -> list[PreparedEvent]:
        teams: dict[int, Team | None] = {}
        for event in events:
            if event is not None:
                team_id = team_id_of(event)
                if team_id is not None and team_id not in teams:
                    teams[team_id] = await self.teams.get(team_id)
                    if teams[team_id] is not None:
                        await self.definitions.load(team_id)
        now = datetime.now(UTC)
        kafka = self._publish is not None
        prepared = []
        for position, event in enumerate(events):
            if event is None:
                continue
            if position % _PREPARE_SLICE == _PREPARE_SLICE - 1:
                await asyncio.sleep(0)
            team_id = team_id_of(event)
            try:
                item = prepare_event(
                    position,
                    event,
                    teams.get(team_id) if team_id is not None else None,
                    now,
                    self._max_bytes,
                    kafka=kafka,
                )
                if not item.is_snapshot and isinstance(item.properties.get("$groups"), dict):
                    await self.group_types.add_group_properties(item.team.id, item.properties)
                finish_properties(item, self._max_bytes, kafka=kafka)
                item.message_id = batch[position].message_id
            except EVENT_ERRORS as error:
                failures.append(_Failure(position, error))
                continue
            except Exception as error:
                if is_outage(error):
                    raise
                # Whatever else one event's content makes a step fail on (a list where an object
                # was expected, ...) is that event's fault: dead-lettered once, never retried.
                failures.append(_Failure(position, _content_error(error)))
                continue
            prepared.append(item)
        return prepared

    async def _write(self, prepared: list[PreparedEvent], failures: list[_Failure]) -> None:
        """All in one transaction; when an event's data spoils it, each event again in its own.
        An outage raises (after the pool's connections are marked for renewal)."""
        try:
            failed = await self._write_once(prepared)
        except Exception as error:
            if is_outage(error):
                await self._pool.expire_connections()  # all of them died with the server
                raise
            if len(prepared) == 1:
                failures.append(_Failure(prepared[0].position, _content_error(error)))
                return
            log.warning("batch_write_failed_isolating", error=str(error), events=len(prepared))
            for item in prepared:
                await self._write([item], failures)
            return
        failures.extend(failed)

    async def _write_once(self, prepared: list[PreparedEvent]) -> list[_Failure]:
        conn = await self._pool.acquire()
        try:
            return await self._write_transaction(conn, prepared)
        finally:
            try:
                await self._pool.release(conn)
            except Exception as error:
                # The transaction ended (committed or not) before the release: a failing reset
                # of the connection must not make a committed batch look failed (the pool has
                # closed that connection).
                log.warning("connection_release_failed", error=repr(error))

    async def _write_transaction(
        self, conn: asyncpg.Connection, items: list[PreparedEvent]
    ) -> list[_Failure]:
        with outbox.collect(enabled=self._publish is not None) as messages:
            failed = await self._write_in_transaction(conn, items)
        if self._publish is not None and messages:
            await self._publish(messages)
        return failed

    async def _write_in_transaction(
        self, conn: asyncpg.Connection, items: list[PreparedEvent]
    ) -> list[_Failure]:
        async with conn.transaction():
            # Constraints are DEFERRABLE in the PostHog schema: check them per statement, so a
            # failing event is caught by its own savepoint instead of spoiling the COMMIT.
            await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            items = await _skip_committed(conn, items)
            if not items:
                return []  # every message was committed before
            changes = await apply_person_changes(conn, items, self.seen)
            failed = [_Failure(p, e) for p, e in changes.failures.items()]
            writable = [item for item in items if item.position not in changes.failures]
            await self._match_actions(conn, writable)
            new_definitions = NewDefinitions()
            ingested_teams: dict[int, Team] = {}
            for item in writable:
                if not item.is_snapshot:
                    self.definitions.collect(
                        new_definitions, item.team.id, item.name, item.view["properties"]
                    )
                    if not item.team.ingested_event:
                        ingested_teams[item.team.id] = item.team
            if new_definitions:
                await self.definitions.write(conn, new_definitions)
            await self.writer.write(conn, writable)
            for team in ingested_teams.values():
                await conn.execute(MARK_TEAM_INGESTED, team.id)
        # committed
        self.seen.add_all(changes.seen)
        self.definitions.committed(new_definitions)
        self.writer.committed(writable)
        for team in ingested_teams.values():
            team.ingested_event = True
        return failed

    async def _match_actions(self, conn: asyncpg.Connection, items: list[PreparedEvent]) -> None:
        by_team: dict[int, list[PreparedEvent]] = {}
        for item in items:
            if not item.is_snapshot and self.actions.team_actions(item.team.id):
                by_team.setdefault(item.team.id, []).append(item)
        for team_id, team_items in by_team.items():
            actions = self.actions.team_actions(team_id)
            if self.actions.team_needs_person(team_id):
                await self._load_persons(conn, team_id, team_items)
            members = await self._cohort_members(conn, actions, team_items)
            for item in team_items:
                person = item.person
                data = MatchInput(
                    event=item.view,
                    properties=item.view["properties"],
                    elements=item.elements,
                    person_properties=person.properties if person else None,
                    person_id=person.id if person else None,
                )
                item.matched = match_actions(actions, data, members)
            wants_person = [i for i in team_items if i.matched and i.person is None]
            if wants_person:
                await self._load_persons(conn, team_id, wants_person)

    @staticmethod
    async def _load_persons(conn: asyncpg.Connection, team_id: int, items: list[PreparedEvent]) -> None:
        persons = await fetch_persons(conn, team_id, list({i.distinct_id for i in items}))
        for item in items:
            item.person = persons.get(item.distinct_id)

    @staticmethod
    async def _cohort_members(
        conn: asyncpg.Connection, actions: Sequence[Any], items: list[PreparedEvent]
    ) -> set[tuple[int, int]]:
        cohort_ids = {c for a in actions for s in a.steps for c in s.cohort_ids()}
        person_ids = {i.person.id for i in items if i.person is not None}
        if not cohort_ids or not person_ids:
            return set()
        rows = await conn.fetch(SELECT_COHORT_MEMBERS, list(cohort_ids), list(person_ids))
        return {(r["cohort_id"], r["person_id"]) for r in rows}

    async def _dead_letter_all(
        self,
        batch: Sequence[IncomingEvent],
        events: Sequence[PluginEvent | None],
        failures: list[_Failure],
        outcomes: list[Outcome],
    ) -> None:
        for failure in failures:
            outcomes[failure.position] = Outcome.DEAD_LETTERED
            # the event as the failed step left it, when that step changed it
            state = failure.error.state if isinstance(failure.error, InvalidEvent) else None
            await self._dead_letter(batch[failure.position], state or events[failure.position], failure.error)

    async def _dead_letter(
        self, incoming: IncomingEvent, event: PluginEvent | None, error: BaseException
    ) -> None:
        reason = _reason(error)
        message = str(error) or type(error).__name__
        EVENTS_FAILED.labels(reason).inc()
        log.warning(
            "event_dead_lettered",
            reason=reason,
            error=message,
            team_id=incoming.team_id,
            uuid=(event or incoming.event).get("uuid"),
        )
        await self._dead_letters.record(
            incoming.raw, message, STAGE_INGESTION, incoming.team_id, event, message_id=incoming.message_id
        )
