"""Kafka mode's event writer: events, session recordings and `$groupidentify` groups go to the
topics ClickHouse reads instead of Postgres tables (spec/ingestion.md §2.6.1, §2.7, §2.10, §3.3).
Nothing is written to posthog_event, posthog_element(group), posthog_action_events or
posthog_sessionrecordingevent; the messages are emitted into the transaction's outbox and
produced once it commits, after the persons' own messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from plugin_server.ingestion import outbox
from plugin_server.ingestion.elements import elements_to_chain
from plugin_server.ingestion.groups import GroupTypeStore
from plugin_server.ingestion.js import truthy
from plugin_server.ingestion.kafka_messages import (
    clickhouse_time,
    dead_letter_record,
    event_record,
    group_record,
    iso_time,
    session_recording_record,
)
from plugin_server.ingestion.prepare import GROUP_IDENTIFY_EVENT, PreparedEvent
from plugin_server.logs import get_logger

log = get_logger(__name__)


class KafkaEventWriter:
    def __init__(self, group_types: GroupTypeStore, max_message_bytes: int) -> None:
        self._group_types = group_types
        self._max_message_bytes = max_message_bytes

    async def write(self, conn: asyncpg.Connection, items: Sequence[PreparedEvent]) -> None:
        # A batch's events share their `created_at` (the wall clock) and often their timestamps.
        ch_times: dict[datetime, str] = {}
        iso_times: dict[datetime, str] = {}
        for item in items:
            if (timestamp := ch_times.get(item.timestamp)) is None:
                timestamp = ch_times[item.timestamp] = clickhouse_time(item.timestamp)
            if item.is_snapshot:
                record = session_recording_record(
                    uuid=item.uuid,
                    team_id=item.team.id,
                    distinct_id=item.distinct_id,
                    timestamp=timestamp,
                    **({} if item.session_id is None else {"session_id": item.session_id}),
                    snapshot_json=None if item.snapshot_missing else item.properties_json,
                )
            else:
                if item.name == GROUP_IDENTIFY_EVENT:
                    await self._write_group(item)
                if (created_at := iso_times.get(item.created_at)) is None:
                    created_at = iso_times[item.created_at] = iso_time(item.created_at)
                record = event_record(
                    uuid=item.uuid,
                    event=item.name,
                    properties=item.properties_json,
                    timestamp=timestamp,
                    team_id=item.team.id,
                    distinct_id=item.distinct_id,
                    created_at=created_at,
                    elements_chain=elements_to_chain(item.elements) if item.elements else "",
                )
            outbox.emit(self._fitting(record, item))

    def committed(self, items: Sequence[PreparedEvent]) -> None:
        return None

    async def _write_group(self, item: PreparedEvent) -> None:
        properties = item.properties
        index = await self._group_types.identified_group_type_index(item.team.id, properties)
        if index is None:  # no type or key, or the team already has the most group types allowed
            return
        group_set = properties.get("$group_set")
        outbox.emit(
            group_record(
                team_id=item.team.id,
                group_type_index=index,
                group_key=properties["$group_key"],
                properties=group_set if truthy(group_set) else {},
            )
        )

    def _fitting(self, record: Any, item: PreparedEvent) -> Any:
        """The record, or a dead letter for it when the broker would refuse it as too large
        (spec §5.2 #16 Recommendation), so one huge event cannot fail its whole batch."""
        size = 0
        for message in record.messages:
            size += len(message.value or b"") + len(message.key or b"")
        if size <= self._max_message_bytes:
            return record
        log.warning("event too large for Kafka; dead-lettered", uuid=item.uuid, bytes=size)
        error = ValueError(
            f"the event's Kafka message has {size} bytes; at most {self._max_message_bytes} fit"
        )
        return dead_letter_record(item.view, error, max_bytes=self._max_message_bytes)
