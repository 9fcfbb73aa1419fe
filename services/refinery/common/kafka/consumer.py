"""A consumer that validates every record and dead-letters the ones that fail, then goes on.

At-least-once: offsets are committed only after the handler returned for every valid
record of a batch and every invalid one is acknowledged on its ``<topic>.dlq``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError
from pydantic import ValidationError

from refinery.common.events import Event, parse_versioned
from refinery.common.kafka.producer import EventProducer
from refinery.common.settings import Settings
from refinery.common.topics import DLQ_SUFFIX, STREAM_EVENTS, Stream, Topics

log = logging.getLogger(__name__)

# Headers on a dead letter: why it failed and where it came from.
H_ERROR = "refinery.error"
H_ERROR_TYPE = "refinery.error.type"
H_TOPIC = "refinery.source.topic"
H_PARTITION = "refinery.source.partition"
H_OFFSET = "refinery.source.offset"
MAX_ERROR_BYTES = 4000


@dataclass(frozen=True)
class Received:
    """A valid event with where it came from."""

    event: Event
    key: str | None
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class DeadLetter:
    """A record read back from a ``.dlq`` topic."""

    value: bytes
    key: bytes | None
    error: str
    error_type: str
    source_topic: str
    source_partition: int
    source_offset: int

    @classmethod
    def from_record(cls, record: ConsumerRecord) -> DeadLetter:
        headers = {k: v.decode() for k, v in record.headers}
        return cls(
            value=record.value,
            key=record.key,
            error=headers[H_ERROR],
            error_type=headers[H_ERROR_TYPE],
            source_topic=headers[H_TOPIC],
            source_partition=int(headers[H_PARTITION]),
            source_offset=int(headers[H_OFFSET]),
        )


def dead_letter_headers(
    topic: str, partition: int, offset: int, exc: Exception
) -> list[tuple[str, bytes]]:
    """The headers every dead letter carries: the cause and where the record came from."""
    return [
        (H_ERROR, str(exc).encode()[:MAX_ERROR_BYTES]),
        (H_ERROR_TYPE, type(exc).__name__.encode()),
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
    ]


def parse_event(stream: Stream, value: bytes | None) -> Event:
    """Decode and validate one record value; raises ValidationError or ValueError."""
    if value is None:
        raise ValueError("record has no value (tombstone)")
    return parse_versioned(STREAM_EVENTS[stream], value)


class EventConsumer:
    """Reads validated events of some streams, in a consumer group or (``group_id=None``)
    from every partition at once, placed by ``assign_all``."""

    def __init__(
        self,
        settings: Settings,
        streams: Iterable[Stream],
        group_id: str | None,
        producer: EventProducer | None = None,
        **kafka_options: Any,
    ) -> None:
        self.topics = Topics.from_settings(settings)
        self.streams = list(streams)
        options: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap,
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
        }
        options.update(kafka_options)
        subscribed = [self.topics.name(s) for s in self.streams] if group_id is not None else []
        self._consumer = KafkaConsumer(*subscribed, **options)
        self._own_producer = producer is None
        self._producer = producer or EventProducer(settings)
        self.dead_lettered = 0

    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[Received]:
        """One poll: valid events returned, invalid ones dead-lettered (and acked) on the way."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        received: list[Received] = []
        pending = []
        for records in batches.values():
            for record in records:
                stream = self.topics.stream_of(record.topic)
                try:
                    event = parse_event(stream, record.value)
                    key = record.key.decode() if record.key is not None else None
                except (ValidationError, ValueError) as exc:  # a key that is no text too
                    pending.append(self._dead_letter(record, exc))
                    continue
                received.append(Received(event, key, record.topic, record.partition, record.offset))
        for future in pending:
            future.get(timeout=30)  # a dead letter must be durable before its offset commits
        return received

    def _dead_letter(self, record: ConsumerRecord, exc: Exception) -> Any:
        self.dead_lettered += 1
        log.warning(
            "dead-lettering %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            str(exc).splitlines()[0],
        )
        headers = dead_letter_headers(record.topic, record.partition, record.offset, exc)
        value = record.value if record.value is not None else b""
        return self._producer.send_raw(record.topic + DLQ_SUFFIX, value, record.key, headers)

    def assignment(self) -> set[tuple[str, int]]:
        """The (topic, partition) pairs this consumer holds now."""
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def resolve_positions(self, timeout_ms: int | None = None) -> dict[tuple[str, int], int]:
        """Fix the position of every assigned partition now (``auto_offset_reset`` applies
        here, not lazily at a later fetch); returns them. ``timeout_ms`` bounds the wait
        (KafkaTimeoutError), which is otherwise as long as the coordinator takes."""
        positions = {}
        for tp in self._consumer.assignment():
            position = self._consumer.position(tp, timeout_ms=timeout_ms)
            if position is None:
                where = f"{tp.topic}-{tp.partition}"
                raise KafkaTimeoutError(f"no position for {where} in {timeout_ms} ms")
            positions[(tp.topic, tp.partition)] = position
        return positions

    def assign_all(self, timeout_ms: int) -> None:
        """Without a group: take every partition of the streams, each read from its end, the
        positions fixed now, so whatever is appended from here on is read. No membership to
        join, so none to lose: a reader that only follows what happens next needs none."""
        partitions = []
        for stream in self.streams:
            topic = self.topics.name(stream)
            found = self._consumer.partitions_for_topic(topic)
            if not found:
                raise KafkaTimeoutError(f"no partitions of {topic}")
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        self._consumer.assign(partitions)
        self._consumer.seek_to_end()
        self.resolve_positions(timeout_ms)

    def commit(self, timeout_ms: int | None = None) -> None:
        """Commit what poll() has returned so far (``timeout_ms``: KafkaTimeoutError after);
        without a group there is nothing to commit to."""
        if self._consumer.config["group_id"] is not None:
            self._consumer.commit(timeout_ms=timeout_ms)

    def run(
        self,
        handler: Callable[[Received], None],
        should_stop: Callable[[], bool],
        timeout_ms: int = 500,
    ) -> None:
        """Handle events until ``should_stop()``; commit after each handled batch."""
        while not should_stop():
            batch = self.poll(timeout_ms=timeout_ms)
            for item in batch:
                handler(item)
            self.commit()

    def close(self) -> None:
        # Offsets are committed explicitly; a bounded close keeps shutdown quick when the
        # broker is away.
        self._consumer.close(autocommit=False, timeout_ms=5000)
        if self._own_producer:
            self._producer.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def newest_events(
    settings: Settings, stream: Stream, last: int = 1, timeout_s: float = 10.0
) -> list[Event]:
    """The valid events among the ``last`` records of each partition of ``stream``, newest
    first (by ``occurred_at``), read without a consumer group; empty if the topic is."""
    from kafka import TopicPartition

    topic = Topics.from_settings(settings).name(stream)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout_s * 1000) + 1000,
    )
    found: list[Event] = []
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        ends = consumer.end_offsets(partitions)
        starts = consumer.beginning_offsets(partitions)
        wanted = [tp for tp in partitions if ends[tp] > starts[tp]]
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, max(starts[tp], ends[tp] - last))
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in wanted):
            if time.monotonic() > deadline:
                break
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        found.append(parse_event(stream, record.value))
                    except (ValidationError, ValueError):
                        continue
    finally:
        consumer.close()
    return sorted(found, key=lambda event: event.occurred_at, reverse=True)
