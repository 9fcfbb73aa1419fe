"""Reading what the gateway wrote to Kafka, for the gateway tests."""

from __future__ import annotations

import time
import uuid

from services.common.events import Event
from services.common.kafka import EventConsumer
from services.common.settings import Settings
from services.common.topics import Stream


def read_events(
    settings: Settings, stream: Stream, want: set[str], key: str, timeout_s: float = 60
) -> list[Event]:
    """All events of ``stream`` whose ``key`` attribute is in ``want`` (duplicates kept)."""
    found: list[Event] = []
    seen: set[str] = set()
    with EventConsumer(settings, [stream], group_id=f"test-{uuid.uuid4()}") as consumer:
        deadline = time.monotonic() + timeout_s
        idle_polls = 0
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            idle_polls = 0 if batch else idle_polls + 1
            for item in batch:
                value = getattr(item.event, key)
                if value in want:
                    found.append(item.event)
                    seen.add(value)
            if seen >= want and idle_polls >= 2:
                break
    return found
