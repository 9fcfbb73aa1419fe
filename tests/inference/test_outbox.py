"""The prediction log's sender as plain logic: a failing SQLite file is retried and shown
(/readyz reads ``problem``), never a silently dead thread."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from refinery.common.kafka import EventProducer
from refinery.inference.outbox import Outbox, OutboxSender


class FailingDisk(Outbox):
    """The real outbox on a file whose reads fail a few times (disk I/O error, disk full)."""

    failures_left = 3

    def peek(self, limit: int) -> list[tuple[int, str, bytes]]:
        if self.failures_left:
            self.failures_left -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return super().peek(limit)


def never_needed() -> EventProducer:
    raise AssertionError("nothing to send: no producer is made")


def test_a_failing_sqlite_file_is_retried_and_reported_not_fatal(tmp_path: Path) -> None:
    sender = OutboxSender(FailingDisk(tmp_path / "outbox.db", 10), never_needed, idle_wait_s=0.01)
    sender.start()
    try:
        deadline = time.monotonic() + 5
        while sender.failures == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        problem = sender.problem()
        assert problem is not None and "SQLite file failed: disk I/O error" in problem
        while sender.problem() is not None and time.monotonic() < deadline + 5:
            time.sleep(0.05)
        assert sender.problem() is None and sender.failures == 3  # recovered, still running
    finally:
        sender.stop(drain_timeout_s=0)
