"""An idempotent, acks=all producer that only sends events valid for their topic."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class _Queued:
    """A request's record on its way to the producer, and the future its handler awaits."""

    stream: Stream
    event: Event
    key: str | None
    deadline: float
    acked: asyncio.Future[RecordMetadata]
    producer: EventProducer | None = None  # the one that took it (discarded if acks fail)

    def settle(self, outcome: RecordMetadata | BaseException) -> None:
        """On the loop; a timed-out wait has cancelled the future already."""
        if self.acked.done():
            return
        if isinstance(outcome, BaseException):
            self.acked.set_exception(outcome)
        else:
            self.acked.set_result(outcome)


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
        self._queued: list[_Queued] = []  # on the event loop: sends not yet handed over
        self._sending: asyncio.Task[None] | None = None
        try:
            self._producer = factory()  # ready for the first send
        except KafkaError as exc:
            log.warning("producer: Kafka not reachable yet (%s); the first send retries", exc)

    async def send_acknowledged(
        self, stream: Stream, event: Event, key: str | None = None, timeout_s: float = 30.0
    ) -> RecordMetadata:
        """``send_and_wait`` for a request handler. The sends of concurrent requests are handed
        to the producer together, in one worker-thread hop per batch (the send may wait for
        metadata or the accumulator's lock, so never on the event loop), and the wait for
        acks=all holds no thread: the producer's own callback wakes the event loop. A hop per
        request showed in the gateway's profile under 32 concurrent raters (the pool's submit
        and a second thread fighting the event loop for the GIL)."""
        loop = asyncio.get_running_loop()
        queued = _Queued(stream, event, key, time.monotonic() + timeout_s, loop.create_future())
        self._queued.append(queued)
        if self._sending is None:
            self._sending = loop.create_task(self._send_queued())
        try:
            return await asyncio.wait_for(
                queued.acked, max(0.0, queued.deadline - time.monotonic())
            )
        except TimeoutError:
            timed_out = KafkaTimeoutError(f"no acknowledgement within {timeout_s:.1f}s")
            if queued.producer is not None:  # closing joins a thread
                await asyncio.to_thread(self._discard, queued.producer, timed_out)
            raise timed_out from None
        except KafkaError as exc:
            if queued.producer is not None:
                await asyncio.to_thread(self._discard, queued.producer, exc)
            raise

    async def _send_queued(self) -> None:
        """Hands what is queued to the producer, batch after batch, until nothing is left."""
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                await asyncio.to_thread(self._send_batch, batch, loop)
        finally:
            self._sending = None

    def _send_batch(self, batch: list[_Queued], loop: asyncio.AbstractEventLoop) -> None:
        """In a worker thread: each record sent, its future settled from the producer's
        callback. A Kafka error fails the rest of the batch (a record sent after it, on a
        discarded producer, could not be acknowledged); an invalid event fails only itself."""
        try:
            producer = self._current(min(queued.deadline for queued in batch))
        except KafkaError as exc:
            for queued in batch:
                loop.call_soon_threadsafe(queued.settle, exc)
            return
        for i, queued in enumerate(batch):
            try:
                sent = producer.send(queued.stream, queued.event, queued.key)
            except KafkaError as exc:
                self._discard(producer, exc)  # here, before the next batch can be handed it
                for failed in batch[i:]:
                    loop.call_soon_threadsafe(failed.settle, exc)
                return
            except Exception as exc:  # EventValidationError: a bug of the caller's
                loop.call_soon_threadsafe(queued.settle, exc)
                continue
            queued.producer = producer  # a failed acknowledgement discards it
            sent.add_callback(lambda meta, q=queued: loop.call_soon_threadsafe(q.settle, meta))
            sent.add_errback(lambda exc, q=queued: loop.call_soon_threadsafe(q.settle, exc))

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
