"""The prediction log as plain logic: a failing SQLite file is retried and shown (/readyz
reads ``problem``), never a silently dead thread; an answer's choices go in together."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from refinery.common.events import PredictionEvent
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


def _choice(prediction_id: str) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=prediction_id,
        endpoint="completions",
        prompt="Ticket: my parcel is late\nTeam:",
        completion=" shipping",
        model="refinery-model",
        model_version="1",
        served_name="refinery-base",
        prompt_tokens=8,
        completion_tokens=1,
        latency_ms=3.0,
    )


def test_the_choices_of_one_answer_are_stored_all_or_none(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", 10)
    outbox.append([_choice("a0"), _choice("a1")])
    # The disk fails on the second choice of the next answer (a trigger raising in SQLite).
    outbox._db.execute(
        "CREATE TRIGGER full BEFORE INSERT ON outbox WHEN NEW.key = 'b1'"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    with pytest.raises(sqlite3.Error, match="disk is full"):
        outbox.append([_choice("b0"), _choice("b1")])
    assert len(outbox) == 2
    assert [key for _, key, _ in outbox.peek(10)] == ["a0", "a1"]  # no b0 without b1
    outbox.append([_choice("c0")])
    assert [key for _, key, _ in outbox.peek(10)] == ["a0", "a1", "c0"]
    outbox.close()
