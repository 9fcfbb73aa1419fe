"""An idempotent, acks=all producer that only sends events valid for their topic."""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata, RecordMetadata
from pydantic import ValidationError

from services.common.events import Event
from services.common.exceptions import EventValidationError
from services.common.settings import Settings
from services.common.topics import STREAM_EVENTS, Stream, Topics


class EventProducer:
    """Sends Refinery events; a record is acknowledged only once all in-sync replicas have it."""

    def __init__(self, settings: Settings, **kafka_options: Any) -> None:
        self.topics = Topics.from_settings(settings)
        options: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
        }
        options.update(kafka_options)
        self._producer = KafkaProducer(**options)

    def send(self, stream: Stream, event: Event, key: str | None = None) -> FutureRecordMetadata:
        """Validate ``event`` against ``stream``'s schema and send it; returns the send future."""
        expected = STREAM_EVENTS[stream]
        if type(event) is not expected:
            raise EventValidationError(
                f"{stream.value} carries {expected.__name__}, got {type(event).__name__}"
            )
        try:
            # model_construct() skips validation; re-validating the dump catches that path too.
            payload = expected.model_validate(event.model_dump()).to_bytes()
        except ValidationError as exc:
            raise EventValidationError(f"invalid {expected.__name__}: {exc}") from exc
        encoded_key = key.encode() if key is not None else None
        return self._producer.send(self.topics.name(stream), value=payload, key=encoded_key)

    def send_and_wait(
        self, stream: Stream, event: Event, key: str | None = None, timeout_s: float = 30.0
    ) -> RecordMetadata:
        """Send and block until the broker acknowledged the record (acks=all)."""
        return self.send(stream, event, key).get(timeout=timeout_s)

    def send_raw(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> FutureRecordMetadata:
        """Send bytes as they are: for dead letters, which must keep the original value."""
        return self._producer.send(topic, value=value, key=key, headers=headers or [])

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
