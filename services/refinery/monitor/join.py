"""The join of predictions and feedback, as pure functions over the table state.

Feedback may come before its prediction, late, twice (the newest rating of a user wins)
or never (entries expire after ``join_ttl_s``). Each (prediction, rating) pair becomes one
labeled example whose ``event_id`` is derived from the feedback event, so re-processing
after a crash re-emits the very same example (consumers dedup by ``event_id``).

Expiry is a sweep per source partition (see ``stale_keys``): faust can only delete a table
key while processing an event of that key's partition, which is where the tombstone goes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from refinery.common.events import (
    ExampleEvent,
    FeedbackEvent,
    PredictionEvent,
    parse_versioned,
    utc_now,
)
from refinery.monitor.blocks import OpenRow, is_keeper_key

_EXAMPLE_NS = uuid.UUID("5d1f6c2e-8a4b-4f5e-9a63-0c7d2b9e1f40")


def example_id(feedback: FeedbackEvent) -> str:
    return str(uuid.uuid5(_EXAMPLE_NS, feedback.event_id))


def make_example(prediction: PredictionEvent, feedback: FeedbackEvent) -> ExampleEvent:
    # Every field comes from a validated event, under the same type: not validated again
    # (validation was 5% of the join's time). Every field is given: for a default factory
    # pydantic 2.14's model_construct inspects the factory's signature on each call.
    return ExampleEvent.model_construct(
        event_id=example_id(feedback),
        occurred_at=utc_now(),
        feedback_id=feedback.feedback_id,
        prediction_id=prediction.prediction_id,
        prompt=prediction.prompt,
        messages=prediction.messages,
        completion=prediction.completion,
        model_version=prediction.model_version,
        segment=prediction.segment,
        rating=feedback.rating,
        correction=feedback.correction,
        comment=feedback.comment,
        user=feedback.user,
        label_source=feedback.source,
        predicted_at=prediction.occurred_at,
        rated_at=feedback.occurred_at,
        tenant=feedback.tenant,
        key_id=feedback.key_id,
    )


@dataclass
class JoinState:
    """What one prediction id holds in the table: the prediction, and the newest rating
    per feedback id (a user's re-rating replaces their earlier one), with the source
    partition it came from (the sweep of that partition expires it), and the drift rows it
    gave its partition's block keeper that are not sealed in a block yet
    (refinery/monitor/blocks.py: written with the state, not apart)."""

    prediction: PredictionEvent | None = None
    feedback: dict[str, FeedbackEvent] = field(default_factory=dict)
    touched_at: float = 0.0
    # None in states written before the field existed: see ``stale_keys``.
    partition: int | None = None
    # [row number, event time, record], the record None for the prediction's own row (made
    # again from ``prediction``: see ``open_rows``).
    rows: list[list[Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "prediction": self.prediction.model_dump(mode="json") if self.prediction else None,
            "feedback": {k: v.model_dump(mode="json") for k, v in self.feedback.items()},
            "touched_at": self.touched_at,
            "partition": self.partition,
        }
        if self.rows:
            raw["rows"] = self.rows
        return raw

    def open_rows(
        self, prediction_row: Callable[[PredictionEvent], dict[str, Any]]
    ) -> list[OpenRow]:
        """The rows this state carries, each with its record (``prediction_row`` makes the
        prediction's own)."""
        rows: list[OpenRow] = []
        for n, at, record in self.rows:
            if record is None:
                assert self.prediction is not None, "a prediction's row without the prediction"
                record = prediction_row(self.prediction)
            rows.append((n, at, record))
        return rows

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> JoinState:
        if not raw:
            return cls()
        prediction = raw.get("prediction")
        return cls(
            prediction=_prediction(prediction) if prediction else None,
            feedback={k: _feedback(v) for k, v in raw["feedback"].items()},
            touched_at=float(raw.get("touched_at", 0.0)),
            partition=raw.get("partition"),
            rows=[list(row) for row in raw.get("rows", ())],
        )


def _prediction(raw: dict[str, Any]) -> PredictionEvent:
    """A stored prediction, in whichever schema version it was kept (v1 before chat)."""
    event = parse_versioned(PredictionEvent, raw)
    assert isinstance(event, PredictionEvent)
    return event


def _feedback(raw: dict[str, Any]) -> FeedbackEvent:
    """A stored rating, in whichever schema version it was kept (v1 before key ids)."""
    event = parse_versioned(FeedbackEvent, raw)
    assert isinstance(event, FeedbackEvent)
    return event


def _newer(a: FeedbackEvent, b: FeedbackEvent) -> bool:
    """Is ``a`` a later rating than ``b``? By time, then by event id for a stable order."""
    key_a: tuple[datetime, str] = (a.occurred_at, a.event_id)
    return key_a > (b.occurred_at, b.event_id)


def on_prediction(state: JoinState, prediction: PredictionEvent, now: float) -> list[ExampleEvent]:
    """Record a prediction; emit examples for feedback that was waiting for it."""
    if state.prediction is not None:
        if state.prediction.event_id != prediction.event_id:
            return []  # a second event under a known prediction id: keep the first
        # Redelivered after a crash: the table may have kept it while the examples were not
        # sent yet, so send them again (same event ids; consumers dedup).
        return [make_example(prediction, fb) for fb in state.feedback.values()]
    state.prediction = prediction
    state.touched_at = now
    return [make_example(prediction, fb) for fb in state.feedback.values()]


def on_feedback(state: JoinState, feedback: FeedbackEvent, now: float) -> list[ExampleEvent]:
    """Record a rating (unless a newer one of the same user is there); emit its example."""
    current = state.feedback.get(feedback.feedback_id)
    if current is not None and not _newer(feedback, current):
        if current.event_id == feedback.event_id and state.prediction is not None:
            return [make_example(state.prediction, feedback)]  # redelivery: same example again
        return []  # an older rating arriving late: the newer one already won
    state.feedback[feedback.feedback_id] = feedback
    state.touched_at = now
    return [make_example(state.prediction, feedback)] if state.prediction is not None else []


def expired(raw: dict[str, Any] | None, now: float, ttl_s: float) -> bool:
    """Has this table value (``JoinState.to_json``) waited past ``ttl_s``? Reads one field,
    so a sweep over every entry decodes none of them."""
    if not raw:
        return False
    return now - float(raw.get("touched_at", 0.0)) > ttl_s


def sweep_interval(ttl_s: float) -> float:
    """How often each partition is swept: an entry outlives its TTL by about half of it at
    most, and by a minute at most with the default day-long TTL."""
    return min(60.0, ttl_s / 2)


def stale_keys(
    entries: Iterable[tuple[str, dict[str, Any] | None]],
    partition: int,
    now: float,
    ttl_s: float,
    recovered_partition: Callable[[str], int | None],
) -> list[str]:
    """Keys of source ``partition`` whose state waited past ``ttl_s``.

    A state without a ``partition`` field predates it; such states reach a worker only by
    changelog recovery, and ``recovered_partition`` says where the changelog held them.
    """
    stale = []
    for key, raw in entries:
        if is_keeper_key(key) or not raw or not expired(raw, now, ttl_s):
            continue
        source = raw.get("partition")
        if source is None:
            source = recovered_partition(key)
        if source == partition:
            stale.append(key)
    return stale
