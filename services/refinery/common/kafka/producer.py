"""An idempotent, acks=all producer that only sends events valid for their topic."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata, RecordMetadata
from pydantic import ValidationError

from refinery.common.events import Event
from refinery.common.exceptions import EventValidationError
from refinery.common.settings import Settings
from refinery.common.topics import STREAM_EVENTS, Stream, Topics

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

    async def send_acknowledged(
        self, stream: Stream, event: Event, key: str | None = None, timeout_s: float = 30.0
    ) -> RecordMetadata:
        """``send_and_wait`` for a request handler: the send (validation, the accumulator's
        lock, at most a metadata wait) runs in a worker thread, but the wait for acks=all
        holds no thread; the producer's own callback wakes the event loop. Concurrent
        requests' records then share the producer's batches, where a thread blocked per
        record capped them at the pool's few threads."""
        deadline = time.monotonic() + timeout_s

        def send() -> tuple[EventProducer, FutureRecordMetadata]:
            producer = self._current(deadline)
            try:
                return producer, producer.send(stream, event, key)
            except KafkaError as exc:
                self._discard(producer, exc)
                raise

        producer, sent = await asyncio.to_thread(send)
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[RecordMetadata] = loop.create_future()

        def settle(outcome: Any) -> None:  # on the loop; a timed-out wait has cancelled it
            if acked.done():
                return
            if isinstance(outcome, BaseException):
                acked.set_exception(outcome)
            else:
                acked.set_result(outcome)

        sent.add_callback(lambda meta: loop.call_soon_threadsafe(settle, meta))
        sent.add_errback(lambda exc: loop.call_soon_threadsafe(settle, exc))
        try:
            return await asyncio.wait_for(acked, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            timed_out = KafkaTimeoutError(f"no acknowledgement within {timeout_s:.1f}s")
            await asyncio.to_thread(self._discard, producer, timed_out)  # closing joins a thread
            raise timed_out from None
        except KafkaError as exc:
            await asyncio.to_thread(self._discard, producer, exc)
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
