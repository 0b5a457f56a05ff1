"""Actions: the per-team cache of actions and steps and matching events against them
(spec/ingestion.md §2.12). `action_cache_services` publishes the cache as `ctx.extras["actions"]`,
where the reload listener finds it for `reload-action` / `drop-action` messages and the pipeline
for matching; `ActionCacheRefresh` loads it at start and reloads it all every 5 minutes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from plugin_server.context import AppContext
from plugin_server.ingestion import queries
from plugin_server.ingestion.js import truthy
from plugin_server.ingestion.property_filters import EMPTY_MATCHING_OPERATORS, check_property_filter
from plugin_server.ingestion.selectors import selector_matches
from plugin_server.logs import get_logger
from plugin_server.supervisor import Service

log = get_logger(__name__)

RELOAD_INTERVAL_SECONDS = 300.0


@dataclass(slots=True)
class ActionStep:
    id: int
    tag_name: str | None = None
    text: str | None = None
    href: str | None = None
    selector: str | None = None
    url: str | None = None
    url_matching: str | None = None
    event: str | None = None
    properties: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ActionStep:
        props = row["properties"]  # decoded by the pool's JSON codec
        return cls(
            id=row["id"],
            tag_name=row["tag_name"],
            text=row["text"],
            href=row["href"],
            selector=row["selector"],
            url=row["url"],
            url_matching=row["url_matching"],
            event=row["event"],
            properties=props if isinstance(props, list) else [],
        )

    def needs_person(self) -> bool:
        return any(f.get("type") in ("person", "cohort") for f in self.properties if isinstance(f, dict))

    def cohort_ids(self) -> set[int]:
        ids = set()
        for f in self.properties:
            if isinstance(f, dict) and f.get("type") == "cohort":
                try:
                    ids.add(int(f.get("value")))  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    pass
        return ids


@dataclass(slots=True)
class Action:
    id: int
    team_id: int
    name: str | None
    post_to_slack: bool
    slack_message_format: str
    steps: list[ActionStep] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: asyncpg.Record, steps: Iterable[ActionStep] = ()) -> Action:
        return cls(
            id=row["id"],
            team_id=row["team_id"],
            name=row["name"],
            post_to_slack=row["post_to_slack"],
            slack_message_format=row["slack_message_format"] or "",
            steps=list(steps),
        )


class ActionCache:
    """team_id -> {action_id -> Action}. Matching reads only this cache."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._by_team: dict[int, dict[int, Action]] = {}

    async def reload_all(self) -> None:
        async with self._pool.acquire() as conn:
            action_rows = await conn.fetch(queries.SELECT_ACTIONS)
            step_rows = await conn.fetch(queries.SELECT_ACTION_STEPS)
        steps: dict[int, list[ActionStep]] = {}
        for row in step_rows:
            steps.setdefault(row["action_id"], []).append(ActionStep.from_row(row))
        by_team: dict[int, dict[int, Action]] = {}
        for row in action_rows:
            action = Action.from_row(row, steps.get(row["id"], []))
            by_team.setdefault(action.team_id, {})[action.id] = action
        self._by_team = by_team

    async def reload_action(self, team_id: int, action_id: int) -> None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(queries.SELECT_ACTION, action_id)
            step_rows = await conn.fetch(queries.SELECT_STEPS_OF_ACTION, action_id) if row else []
        if row is None:
            await self.drop_action(team_id, action_id)
            return
        action = Action.from_row(row, (ActionStep.from_row(s) for s in step_rows))
        self._by_team.setdefault(action.team_id, {})[action.id] = action

    async def drop_action(self, team_id: int, action_id: int) -> None:
        self._by_team.get(team_id, {}).pop(action_id, None)

    def team_actions(self, team_id: int) -> list[Action]:
        """Ascending action id, as the original returned matches."""
        actions = self._by_team.get(team_id)
        return [actions[k] for k in sorted(actions)] if actions else []

    def team_needs_person(self, team_id: int) -> bool:
        return any(step.needs_person() for a in self.team_actions(team_id) for step in a.steps)


class ActionCacheRefresh:
    """A looping service reloading every action every 5 minutes (the original's cron)."""

    name = "action-cache-refresh"

    def __init__(self, actions: ActionCache, interval: float = RELOAD_INTERVAL_SECONDS) -> None:
        self._actions = actions
        self._interval = interval
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        await self._actions.reload_all()

    async def run(self) -> None:
        while not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=self._interval)
            except TimeoutError:
                await self._actions.reload_all()

    async def stop(self) -> None:
        self._stopped.set()


# -- matching


@dataclass(slots=True)
class MatchInput:
    """What a step is checked against: the event as ingestion left it, the person after ingestion."""

    event: dict[str, Any]
    properties: dict[str, Any]
    elements: list[dict[str, Any]]
    person_properties: dict[str, Any] | None
    person_id: int | None


CohortMembers = Collection[tuple[int, int]]  # (cohort_id, person_id) pairs known to exist


def _like_to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _url_matches(step: ActionStep, url: Any) -> bool:
    if not isinstance(url, str) or not url:
        return False
    assert step.url is not None
    if step.url_matching == "regex":
        try:
            return re.search(step.url, url) is not None
        except re.error:
            return False
    if step.url_matching == "exact":
        return url == step.url
    return _like_to_regex(step.url).search(url) is not None


def _element_fields_match(step: ActionStep, elements: list[dict[str, Any]]) -> bool:
    wanted = {k: v for k, v in (("href", step.href), ("tag_name", step.tag_name), ("text", step.text)) if v}
    return any(all(el.get(k) == v for k, v in wanted.items()) for el in elements)


def _filter_passes(f: dict[str, Any], data: MatchInput, cohort_members: CohortMembers) -> bool:
    kind = f.get("type")
    if kind == "event":
        return check_property_filter(data.properties, f)
    if kind == "person":
        if not data.person_properties:
            return (f.get("operator") or "exact") in EMPTY_MATCHING_OPERATORS
        return check_property_filter(data.person_properties, f)
    if kind == "element":
        if f.get("key") == "selector":
            value = f.get("value")
            selectors = value if isinstance(value, list) else [value]
            return any(truthy(s) and selector_matches(str(s), data.elements) for s in selectors)
        return any(check_property_filter(el, f) for el in data.elements)
    if kind == "cohort":
        value = f.get("value")
        if value == "all":
            return True
        if data.person_id is None:
            return False
        return (int(value), data.person_id) in cohort_members  # type: ignore[arg-type]
    return False


def step_matches(step: ActionStep, data: MatchInput, cohort_members: CohortMembers) -> bool:
    if step.href or step.tag_name or step.text:
        if not _element_fields_match(step, data.elements):
            return False
    if step.selector and not selector_matches(step.selector, data.elements):
        return False
    if step.url and not _url_matches(step, data.properties.get("$current_url")):
        return False
    if step.event and data.event.get("event") != step.event:
        return False
    return all(_filter_passes(f, data, cohort_members) for f in step.properties if isinstance(f, dict))


def match_actions(actions: list[Action], data: MatchInput, cohort_members: CohortMembers) -> list[Action]:
    matched = []
    for action in actions:
        for step in action.steps:
            try:
                if step_matches(step, data, cohort_members):
                    matched.append(action)
                    break
            except Exception as error:  # a bad regex, cohort id or selector fails only this step
                log.warning(
                    "action_step_check_failed", action_id=action.id, step_id=step.id, error=str(error)
                )
    return matched


ACTIONS = "actions"  # the AppContext.extras key of the shared ActionCache


def action_cache_services(ctx: AppContext) -> list[Service]:
    """The shared action cache, published for the reload listener and the pipeline (so build this
    before `build_plugin_drivers`), with its refresh service."""
    cache = ActionCache(ctx.postgres)
    ctx.extras[ACTIONS] = cache
    return [ActionCacheRefresh(cache)]
