"""Plain data passed between the queue consumers, the pipeline and the plugin runner."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

# The PluginEvent dict (spec/ingestion.md §1.4): distinct_id, ip, site_url, team_id, now,
# sent_at, event, properties, timestamp?, offset?, uuid.
PluginEvent = dict[str, Any]


@dataclass(slots=True)
class IncomingEvent:
    """One event taken off a queue, with what is needed to dead-letter it."""

    team_id: int
    event: PluginEvent
    raw: bytes | str
    source: str  # "celery" or "kafka"
    # Identifies the message across deliveries: when set, its effects are committed once
    # (a message delivered again is skipped). None: no such bookkeeping (Kafka mode).
    message_id: bytes | None = None


class Outcome(enum.Enum):
    INGESTED = "ingested"
    DROPPED = "dropped"  # a plugin returned nothing: not an error
    DEAD_LETTERED = "dead_lettered"
    DUPLICATE = "duplicate"  # the message was delivered before and its effects are committed
