"""A bounded on-disk outbox for predictions, drained to Kafka by a background thread.

The request path only appends to SQLite (no Kafka round trip); the sender sends in order,
waits for acks=all and deletes what was acknowledged. A broker outage just lets the outbox
grow (up to its bound) until the broker is back; shutdown drains what it can. A record may
be sent twice after a crash between ack and delete: consumers dedup by ``event_id``.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kafka.errors import KafkaError

from refinery.common.events import PredictionEvent
from refinery.common.kafka import EventProducer
from refinery.common.topics import Stream
from refinery.inference.exceptions import Unavailable

log = logging.getLogger(__name__)


class Outbox:
    """Durable FIFO of serialized events (SQLite in WAL mode; safe across threads)."""

    def __init__(self, path: Path, max_events: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_events = max_events
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # survives a process crash
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " key TEXT NOT NULL, value BLOB NOT NULL)"
        )
        self._lock = threading.Lock()
        self._size = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def __len__(self) -> int:
        return self._size

    def append(self, events: Sequence[PredictionEvent]) -> None:
        """Store the predictions of one answer (one per choice), all or none; raises
        Unavailable when the outbox is full."""
        rows = [(event.prediction_id, event.to_bytes()) for event in events]
        with self._lock:
            if self._size >= self.max_events:
                raise Unavailable(
                    f"prediction log is full ({self._size} events wait for Kafka); retry later",
                    retry_after_s=5,
                )
            with self._db:  # commits, or rolls back on an error
                self._db.execute("BEGIN")  # the connection autocommits otherwise
                self._db.executemany("INSERT INTO outbox (key, value) VALUES (?, ?)", rows)
            self._size += len(rows)

    def peek(self, limit: int) -> list[tuple[int, str, bytes]]:
        with self._lock:
            return self._db.execute(
                "SELECT seq, key, value FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()

    def remove_through(self, seq: int) -> None:
        with self._lock:
            removed = self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,)).rowcount
            self._size -= removed

    def close(self) -> None:
        with self._lock:
            self._db.close()


class OutboxSender:
    """Background thread: outbox → Kafka, in order, retrying while the broker is away."""

    def __init__(
        self,
        outbox: Outbox,
        producer_factory: Callable[[], EventProducer],
        batch_size: int = 500,
        idle_wait_s: float = 0.1,
    ) -> None:
        self.outbox = outbox
        self._producer_factory = producer_factory
        self._producer: EventProducer | None = None
        self.batch_size = batch_size
        self.idle_wait_s = idle_wait_s
        self.sent = 0
        self.failures = 0
        self.error: str | None = None  # why the last attempt failed on our side (not Kafka's)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        """Never ends but at stop: every failure is retried with backoff. Kafka's show in
        /readyz's kafka check; ours (the SQLite file: disk full, I/O error) in ``problem``."""
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                if self.drain_once() == 0:
                    self._wake.wait(self.idle_wait_s)
                    self._wake.clear()
                backoff, self.error = 0.2, None
                continue
            except sqlite3.ProgrammingError:
                return  # the outbox was closed under us at shutdown: what is left stays on disk
            except (KafkaError, OSError) as exc:
                log.warning("outbox: Kafka unavailable (%s); %d waiting", exc, len(self.outbox))
                self._reset_producer()
            except sqlite3.Error as exc:
                self.error = f"the prediction log's SQLite file failed: {exc}"
                log.error("outbox: %s; retrying", self.error)
            except Exception as exc:  # a bug must not stop the log silently either
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("outbox: sending failed; retrying")
            self.failures += 1
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def problem(self) -> str | None:
        """Why predictions are not leaving the log (None: they are, or Kafka is away)."""
        if not self._thread.is_alive() and not self._stopping.is_set():
            return "the sender thread is not running"
        return self.error

    def drain_once(self) -> int:
        """Send one batch and wait for its acks; returns how many were sent."""
        rows = self.outbox.peek(self.batch_size)
        if not rows:
            return 0
        if self._producer is None:
            self._producer = self._producer_factory()
        producer = self._producer
        topic = producer.topics.name(Stream.PREDICTIONS)
        futures = [producer.send_raw(topic, value, key.encode()) for _, key, value in rows]
        for future in futures:
            future.get(timeout=30)
        self.outbox.remove_through(rows[-1][0])
        self.sent += len(rows)
        return len(rows)

    def _reset_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                self._producer.close(timeout_s=1)
            self._producer = None

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop after trying to drain for up to ``drain_timeout_s``; the rest stays on disk."""
        deadline = time.monotonic() + drain_timeout_s
        while len(self.outbox) and time.monotonic() < deadline:
            self.notify()
            time.sleep(0.05)
        self._stopping.set()
        self._wake.set()
        # A send may still wait on an absent broker; the thread is a daemon and unsent rows
        # stay in SQLite, so shutdown need not wait for it.
        self._thread.join(timeout=2)
        self._reset_producer()
        if len(self.outbox):
            log.warning("outbox: %d predictions stay on disk for the next start", len(self.outbox))
