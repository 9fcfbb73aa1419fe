"""An idempotent, acks=all producer that only sends events valid for their topic."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata, RecordMetadata
from pydantic import ValidationError

from services.common.events import Event
from services.common.exceptions import EventValidationError
from services.common.settings import Settings
from services.common.topics import STREAM_EVENTS, Stream, Topics

log = logging.getLogger(__name__)


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
        """Send what is pending for up to ``timeout_s``, then stop; what is left unsent fails."""
        try:
            self._producer.close(timeout=timeout_s)
        except KafkaTimeoutError:
            # kafka-python 3.0.12's close() flushes first and raises when the flush times out,
            # before it stops the sender thread (kafka/producer/kafka.py, close): a producer
            # whose records can never complete would keep its thread and sockets for good.
            # force_close() makes the sender fail what is left and exit; then close() can end.
            log.warning("producer: records still unsent after %.1fs; dropping them", timeout_s)
            sender = self._producer._sender
            sender.force_close()
            sender.join(timeout=5)
            self._producer.close(timeout=0)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RenewingProducer:
    """One EventProducer at a time: a send that fails discards it, the next send makes another.

    kafka-python 3.0.12's idempotent producer can lose its producer id for good: when a batch
    it already sent and retried expires (a failover slower than ``delivery_timeout_ms``), the
    sender calls ``reset_producer_id()``, which clears the id but leaves the state READY, and
    ``init_producer_id()`` only asks for a new id from UNINITIALIZED: the sender then waits for
    an id forever and every later send times out. A new producer bootstraps from the brokers
    that answer and gets a fresh id. The failed one is closed at once, dropping what it still
    holds rather than retrying it behind the new producer's records.
    """

    def __init__(self, factory: Callable[[], EventProducer]) -> None:
        self._factory = factory
        self._swap = threading.Lock()  # guards _producer; held only to read or swap it
        self._build = threading.Lock()  # one new producer at a time
        self._producer: EventProducer | None = None
        try:
            self._producer = factory()  # ready for the first send
        except KafkaError as exc:
            log.warning("producer: Kafka not reachable yet (%s); the first send retries", exc)

    def send_and_wait(
        self, stream: Stream, event: Event, key: str | None = None, timeout_s: float = 30.0
    ) -> RecordMetadata:
        """Send and block until acks=all, all within ``timeout_s`` (making a producer included)."""
        deadline = time.monotonic() + timeout_s
        producer = self._current(deadline)
        try:
            return producer.send_and_wait(stream, event, key, max(0.0, deadline - time.monotonic()))
        except KafkaError as exc:
            self._discard(producer, exc)
            raise

    def _current(self, deadline: float) -> EventProducer:
        with self._swap:
            if self._producer is not None:
                return self._producer
        if not self._build.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise KafkaTimeoutError("no Kafka producer yet: another request is making one")
        try:
            with self._swap:
                if self._producer is not None:
                    return self._producer
            producer = self._factory()  # bootstraps: bounded by the factory's bootstrap_timeout_ms
            with self._swap:
                self._producer = producer
            return producer
        finally:
            self._build.release()

    def _discard(self, producer: EventProducer, exc: KafkaError) -> None:
        with self._swap:
            if self._producer is not producer:
                return  # a concurrent failure discarded it already
            self._producer = None
        log.warning("producer: send failed (%s); the next send makes a new producer", exc)
        producer.close(timeout_s=0)

    def close(self, timeout_s: float = 30.0) -> None:
        with self._swap:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout_s)
