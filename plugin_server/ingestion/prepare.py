"""Turning one post-plugin event into what ingestion writes: validated, timestamped, with its
stored properties, elements and person changes worked out (spec/ingestion.md §2.2-§2.7).
Pure except for the team and group-type lookups, which are cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from plugin_server.ingestion.elements import InvalidElements, element_rows, elements_hash, extract_elements
from plugin_server.ingestion.identify import identify_plan
from plugin_server.ingestion.js import js_string, json_text, truthy, utf16_sort_key
from plugin_server.ingestion.properties import (
    MISSING_NAME,
    InvalidEvent,
    event_properties,
    sanitize_event_name,
    with_initial_and_campaign,
)
from plugin_server.ingestion.timestamps import compute_timestamp, parse_iso, parse_sent_at, to_datetime
from plugin_server.ingestion.uuidt import is_valid_uuid, uuidt

if TYPE_CHECKING:
    from plugin_server.ingestion.actions import Action
    from plugin_server.ingestion.persons import Person
    from plugin_server.ingestion.teams import Team

SNAPSHOT_EVENT = "$snapshot"
GROUP_IDENTIFY_EVENT = "$groupidentify"
DISTINCT_ID_LIMIT = 200  # posthog_event.distinct_id, posthog_sessionrecordingevent.distinct_id
KAFKA_DISTINCT_ID_LIMIT = 400  # posthog_persondistinctid.distinct_id: ClickHouse has no limit
NULL_ATTRIBUTE_ERROR = "Cannot read properties of null (reading 'toString')"
SESSION_ID_LIMIT = 200


class UnknownTeam(LookupError):
    pass


@dataclass(slots=True)
class PreparedEvent:
    """One event ready to write. `view` is the event as action matching and REST hooks see it."""

    position: int
    team: Team
    distinct_id: str
    uuid: str
    name: str
    is_snapshot: bool
    timestamp: datetime
    created_at: datetime  # wall clock (events) or the event time (recordings)
    person_created_at: datetime
    view: dict[str, Any]
    properties: dict[str, Any]  # as stored
    properties_json: str
    elements: list[dict[str, Any]] = field(default_factory=list)
    elements_json: str = "[]"
    elements_hash: str = ""
    element_rows: list[tuple[Any, ...]] = field(default_factory=list)
    identify: tuple[Any, bool] | None = None
    set_props: dict[str, Any] | None = None  # None: no person property update
    set_once_props: dict[str, Any] | None = None
    session_id: str | None = ""  # None: the event had none (Kafka mode leaves the key out)
    snapshot_missing: bool = False  # no $snapshot_data (Kafka mode leaves the key out)
    message_id: bytes | None = None  # see IncomingEvent.message_id
    # filled while writing
    duplicate: bool = False  # its message's effects were committed before: nothing written
    event_id: int | None = None
    matched: list[Action] = field(default_factory=list)
    person: Person | None = None

    @property
    def person_key(self) -> tuple[int, str]:
        return self.team.id, self.distinct_id


def team_id_of(event: dict[str, Any]) -> int | None:
    value = event.get("team_id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _check_text(label: str, text: str, limit: int | None = None) -> None:
    if "\x00" in text:
        raise InvalidEvent(f"{label} contains a NUL character")
    if limit is not None and len(text) > limit:
        raise InvalidEvent(f"{label} is longer than {limit} characters")


def _check_json(label: str, text: str, max_bytes: int, *, nul_ok: bool = False) -> None:
    if not nul_ok and "\\u0000" in text:
        raise InvalidEvent(f"{label} contains a NUL character")
    if len(text) > max_bytes and len(text.encode()) > max_bytes:
        raise InvalidEvent(f"{label} is larger than {max_bytes} bytes")


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def prepare_event(
    position: int,
    event: dict[str, Any],
    team: Team | None,
    now_wall: datetime,
    max_bytes: int,
    *,
    kafka: bool = False,
) -> PreparedEvent:
    """Everything but group properties (`add_group_properties` runs afterwards when `$groups` is set).

    `kafka`: the event goes to ClickHouse through Kafka, which takes what Postgres would refuse in
    the event itself (NUL characters, distinct ids over 200 characters, recordings without a
    session id), as the original's Kafka mode did."""
    uuid = event.get("uuid")
    if not isinstance(uuid, str) or not is_valid_uuid(uuid):
        raise InvalidEvent(f'Not a valid UUID: "{js_string(uuid) if "uuid" in event else "undefined"}"')
    if team is None:
        raise UnknownTeam(f"No team found with ID {js_string(event.get('team_id'))}. Can't ingest event.")
    distinct_id = js_string(event["distinct_id"]) if "distinct_id" in event else "undefined"
    _check_text("distinct_id", distinct_id, KAFKA_DISTINCT_ID_LIMIT if kafka else DISTINCT_ID_LIMIT)
    properties = event_properties(event)
    now_ms = parse_iso(event.get("now"))
    sent_at_ms = parse_sent_at(event.get("sent_at"))
    timestamp = to_datetime(
        compute_timestamp(event.get("timestamp"), event.get("offset"), now_ms, sent_at_ms)
    )
    raw_name = event.get("event")
    plan = identify_plan(raw_name, distinct_id, properties)
    view = dict(event)
    view["properties"] = properties

    if raw_name == SNAPSHOT_EVENT:
        session_id: str | None = None
        if properties.get("$session_id") is not None:
            session_id = js_string(properties["$session_id"])
            _check_text("$session_id", session_id, None if kafka else SESSION_ID_LIMIT)
        elif not kafka:
            raise InvalidEvent("$snapshot event without $session_id")
        snapshot_missing = "$snapshot_data" not in properties
        if snapshot_missing and not kafka:
            raise InvalidEvent("$snapshot event without $snapshot_data")
        snapshot_json = "" if snapshot_missing else json_text(properties["$snapshot_data"])
        _check_json("$snapshot_data", snapshot_json, max_bytes, nul_ok=kafka)
        return PreparedEvent(
            position=position,
            team=team,
            distinct_id=distinct_id,
            uuid=uuid,
            name=SNAPSHOT_EVENT,
            is_snapshot=True,
            timestamp=timestamp,
            created_at=timestamp,
            person_created_at=now_wall,
            view=view,
            properties=properties,
            properties_json=snapshot_json,
            identify=plan,
            session_id=session_id,
            snapshot_missing=snapshot_missing,
        )

    name = sanitize_event_name(raw_name if "event" in event else MISSING_NAME)
    _check_text("event name", name)
    elements: list[dict[str, Any]] = []
    raw_elements = properties.get("$elements")
    if truthy(raw_elements) and isinstance(raw_elements, list | str) and len(raw_elements) > 0:
        del properties["$elements"]
        try:
            elements = extract_elements(raw_elements)  # type: ignore[arg-type]
        except InvalidElements as error:
            error.state = view  # dead-lettered as the original left it: `$elements` taken out
            raise
    ip = event.get("ip")
    if truthy(ip) and not team.anonymize_ips and "$ip" not in properties:
        properties["$ip"] = ip
    stored = with_initial_and_campaign(properties)
    prepared = PreparedEvent(
        position=position,
        team=team,
        distinct_id=distinct_id,
        uuid=uuid,
        name=name,
        is_snapshot=False,
        timestamp=timestamp,
        created_at=now_wall,
        person_created_at=to_datetime(sent_at_ms) if sent_at_ms is not None else now_wall,
        view=view,
        properties=stored,
        properties_json="",
        identify=plan,
    )
    if elements:
        for element in elements:
            classes = element.get("attr_class")
            if classes is not None:
                # the original builds the elements chain first in both modes, which sorts the
                # classes in place: the stored elements and the group hash see them sorted
                classes.sort(key=utf16_sort_key)
        if kafka and any(v is None for el in elements for v in (el.get("attributes") or {}).values()):
            failure = InvalidEvent(NULL_ATTRIBUTE_ERROR)  # the original's elements chain fails on it
            failure.state = {**view, "properties": properties}  # with `$ip`, without `$elements`
            raise failure
        prepared.elements = elements
        prepared.elements_json = json_text(elements)
        _check_json("$elements", prepared.elements_json, max_bytes, nul_ok=kafka)
        prepared.elements_hash = elements_hash(elements)
        prepared.element_rows = element_rows(elements)
    if name != GROUP_IDENTIFY_EVENT and (truthy(stored.get("$set")) or truthy(stored.get("$set_once"))):
        prepared.set_props = _dict_or_empty(stored.get("$set"))
        prepared.set_once_props = _dict_or_empty(stored.get("$set_once"))
    return prepared


def finish_properties(prepared: PreparedEvent, max_bytes: int, *, kafka: bool = False) -> None:
    """Serialize the stored properties (after group properties were added)."""
    if not prepared.is_snapshot:
        prepared.properties_json = json_text(prepared.properties)
        _check_json("properties", prepared.properties_json, max_bytes, nul_ok=kafka)


def new_person_uuid() -> str:
    return uuidt()
