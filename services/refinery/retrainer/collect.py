"""Collection: the labeled examples on ``refinery.examples`` up to fixed offsets, plus the
champion's seed training data, as a snapshot that can be rebuilt.

The end offsets are taken when a run starts (or read back from the run when it resumes),
so a resumed or repeated run trains on exactly the same records. Within the snapshot a
re-rating replaces the earlier one (same ``feedback_id``: the newest ``rated_at`` wins),
and a record delivered twice counts once (same ``event_id``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field

from kafka import KafkaConsumer, TopicPartition
from pydantic import ValidationError

from refinery.common.events import ExampleEvent, parse_versioned
from refinery.common.exceptions import RefineryError
from refinery.common.settings import Settings
from refinery.common.topics import Stream, Topics

log = logging.getLogger(__name__)


class ExamplesGone(RefineryError):
    """Records the snapshot needs were deleted from the examples topic (retention, or a
    delete-records): training on the rest would silently drop labels."""


@dataclass(frozen=True)
class Snapshot:
    """What a run trained on: enough to rebuild it (the offsets) and to check it (the hash)."""

    topic: str
    end_offsets: dict[int, int]
    records_read: int
    invalid: int
    examples: int
    sha256: str
    seed_uri: str | None = None
    seed_examples: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def end_offsets(settings: Settings, stream: Stream = Stream.EXAMPLES) -> dict[int, int]:
    """The current end of every partition of the stream's topic (the examples topic)."""
    topic = Topics.from_settings(settings).name(stream)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: off for tp, off in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def _check_nothing_deleted(consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
    """A partition whose log starts past 0 lost records (compaction keeps the start at 0);
    a seek to 0 there would jump to the end and read nothing without a word."""
    starts = consumer.beginning_offsets(partitions)
    gone = {tp.partition: start for tp, start in starts.items() if start > 0}
    if gone:
        where = ", ".join(f"partition {p} starts at offset {o}" for p, o in sorted(gone.items()))
        raise ExamplesGone(
            f"{partitions[0].topic} lost records before the snapshot's start ({where}); "
            "its retention or a delete-records trimmed the training corpus. Topics made by "
            "`refinery up` compact it by feedback id and never delete by age: check "
            "`retention.ms` and `cleanup.policy` on this topic"
        )


def read_examples(
    settings: Settings, until: dict[int, int], timeout_s: float = 120
) -> tuple[list[ExampleEvent], Snapshot]:
    """Every example record before ``until`` (partition -> end offset), deduplicated."""
    topic = Topics.from_settings(settings).name(Stream.EXAMPLES)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None
    )
    partitions = [TopicPartition(topic, p) for p, end in until.items() if end > 0]
    by_feedback: dict[str, ExampleEvent] = {}
    seen: set[str] = set()
    read = invalid = 0
    try:
        consumer.assign(partitions)
        _check_nothing_deleted(consumer, partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        remaining = {tp for tp in partitions}
        idle = 0
        while remaining:
            batches = consumer.poll(timeout_ms=1000)
            idle = 0 if batches else idle + 1
            if idle * 1.0 > timeout_s:
                raise TimeoutError(f"examples topic stalled before the snapshot's end: {until}")
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= until[tp.partition]:
                        continue
                    read += 1
                    try:
                        event = parse_versioned(ExampleEvent, record.value or b"")
                        assert isinstance(event, ExampleEvent)
                    except ValidationError:
                        invalid += 1  # the monitor validates; count what slipped past anyway
                        continue
                    if event.event_id in seen:
                        continue
                    seen.add(event.event_id)
                    known = by_feedback.get(event.feedback_id)
                    if known is None or (event.rated_at, event.event_id) > (
                        known.rated_at,
                        known.event_id,
                    ):
                        by_feedback[event.feedback_id] = event
            for tp in list(remaining):
                if consumer.position(tp) >= until[tp.partition]:
                    remaining.discard(tp)
    finally:
        consumer.close()
    examples = sorted(by_feedback.values(), key=lambda e: (e.rated_at, e.event_id))
    digest = hashlib.sha256()
    for e in examples:
        digest.update(e.event_id.encode())
    snapshot = Snapshot(
        topic=topic,
        end_offsets=dict(until),
        records_read=read,
        invalid=invalid,
        examples=len(examples),
        sha256=digest.hexdigest(),
    )
    log.info(
        "collect: %d records up to %s -> %d examples (%d invalid)",
        read,
        until,
        len(examples),
        invalid,
    )
    return examples, snapshot
