"""``refinery review``: the queue, answers checked, labels joined as reviewer examples."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from refinery.cli.review import held_corrections, parse_answer, queue, review
from refinery.common.events import ExampleEvent, FeedbackEvent
from refinery.common.kafka import EventProducer, ensure_topics
from refinery.common.settings import Settings
from refinery.common.task import load_task
from refinery.common.topics import Stream
from tests.conftest import TEST_TASK
from tests.inference.helpers import read_events

TASK_FILE = load_task(TEST_TASK)
TASK = TASK_FILE.task
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def example(
    pid: str,
    rating: str,
    correction: str | None = None,
    minutes: int = 0,
    user: str | None = None,
    completion: str = " billing",
) -> ExampleEvent:
    return ExampleEvent(
        feedback_id=f"{pid}:{uuid.uuid4().hex[:4]}",
        prediction_id=pid,
        prompt="Ticket: hub offline\nTeam:",
        completion=completion,
        model_version="1",
        rating=rating,  # type: ignore[arg-type]
        correction=correction,
        predicted_at=T0,
        rated_at=T0 + timedelta(minutes=minutes),
        user=user,
    )


def test_the_queue_holds_uncorrected_thumbs_down_once_oldest_first() -> None:
    items = [
        example("late", "down", minutes=5),
        example("up", "up"),
        example("fixed", "down", " technical"),
        example("fixed", "down"),  # another user's thumbs-down on a corrected prediction
        example("early", "down", minutes=1),
        example("early", "down", minutes=2),
    ]
    assert [e.prediction_id for e in queue(items)] == ["early", "late"]


def test_a_correction_other_users_contradict_waits_for_a_reviewer() -> None:
    """Three users' thumbs-up of " technical" on the same ticket contradict one user's
    " billing": the retrainer holds that correction back, so it is queued for review."""
    items = [
        example("claimed", "down", " billing", user="mallory", completion=" technical"),
        *(example(f"ok{i}", "up", user=f"user{i}", completion=" technical") for i in range(3)),
        example("trusted", "down", " technical", minutes=1, user="rita"),
    ]
    held = held_corrections(items, TASK, TASK_FILE.feedback)
    assert held == {items[0].event_id}
    assert [e.prediction_id for e in queue(items, held)] == ["claimed"]
    assert queue(items) == []  # without the hold, both corrections count as labels


def test_answers_are_checked_against_the_labels() -> None:
    assert parse_answer(TASK, " Technical ") == " technical"
    assert parse_answer(TASK, "") is None
    with pytest.raises(ValueError, match="not a label"):
        parse_answer(TASK, "plumbing")


def test_a_reviewers_label_is_sent_as_reviewer_feedback(kafka_stack: Settings) -> None:
    settings = kafka_stack.model_copy(update={"topic_prefix": f"review{uuid.uuid4().hex[:6]}"})
    ensure_topics(settings)
    waiting = [example(f"p{i}", "down", minutes=i) for i in range(2)]
    with EventProducer(settings) as producer:
        for e in waiting:
            producer.send_and_wait(Stream.EXAMPLES, e, key=e.feedback_id)

    shown: list[str] = []
    answers = iter(["nonsense", "technical", ""])  # a bad answer, a label, a skip
    result = review(
        settings, TASK, TASK_FILE.feedback, lambda _: next(answers), shown.append, "rita"
    )
    assert (result.queued, result.labeled, result.skipped) == (2, 1, 1)
    assert any("not a label" in s for s in shown)

    sent = read_events(settings, Stream.FEEDBACK, {"p0", "p1"}, "prediction_id", timeout_s=10)
    assert len(sent) == 1 and isinstance(sent[0], FeedbackEvent)
    fb = sent[0]
    assert (fb.prediction_id, fb.source, fb.correction, fb.user) == (
        "p0",
        "reviewer",
        " technical",
        "rita",
    )
    assert fb.feedback_id == "p0:reviewer"  # its own id: the user's rating stays as it was
