"""The window state machine over a plain dict (the worker runs it over a faust table)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.common.events import PredictionEvent
from services.common.task import DriftSpec, TaskObjective
from services.monitor.windows import (
    DriftWindows,
    prediction_record,
    reset_record,
)

TASK = TaskObjective(
    name="t", kind="classification", prompt_template="Ticket: {text}\nTeam:", labels=["a", "b"]
)
SPEC = DriftSpec(window_size=20, window_minutes=1, reference_size=40, min_examples=0)


def predicted(version: str = "1", text: str = "my order is late") -> dict[str, Any]:
    p = PredictionEvent(
        prediction_id=str(uuid.uuid4()),
        endpoint="completions",
        prompt=TASK.render(text),
        completion=" a",
        model="m",
        model_version=version,
        served_name=f"m-v{version}",
        prompt_tokens=6,
        completion_tokens=1,
        latency_ms=5.0,
    )
    return prediction_record(p, TASK)


def rated(feedback_id: str, down: bool, version: str = "1") -> dict[str, Any]:
    return {"kind": "rating", "model_version": version, "feedback_id": feedback_id, "down": down}


def test_reference_fills_first_then_windows_close_by_count() -> None:
    store: dict[str, Any] = {}
    windows = DriftWindows(store, SPEC)
    for _ in range(40):
        windows.apply(predicted(), now=0)
    assert windows.meta["phase"] == "current"
    for i in range(20):
        assert not windows.due(now=1)
        windows.apply(predicted(), now=1 + i)
    assert windows.due(now=21)
    closed = windows.close()
    assert (closed.index, len(closed.reference), len(closed.current)) == (0, 40, 20)
    assert not windows.due(now=21)
    assert not any(k.startswith("cur:") for k in store)
    assert windows.meta["index"] == 1


def test_a_window_closes_by_time_when_traffic_is_thin() -> None:
    windows = DriftWindows({}, SPEC)
    for _ in range(40):
        windows.apply(predicted(), now=0)
    windows.apply(predicted(), now=100)
    assert not windows.due(now=159)
    windows.apply({"kind": "tick"}, now=160)
    assert windows.due(now=160)
    assert len(windows.close().current) == 1


def test_other_versions_are_in_no_window_and_a_promotion_resets() -> None:
    store: dict[str, Any] = {}
    windows = DriftWindows(store, SPEC)
    windows.apply(predicted("1"), now=0)
    windows.apply(predicted("2"), now=0)  # not the version the monitor adopted
    assert windows.meta["ref_n"] == 1
    windows.apply(rated("f1", down=True), now=0)
    assert windows.trigger_state.examples_since_training == 1
    windows.apply(reset_record("2"), now=0)
    assert windows.meta["version"] == "2" and windows.meta["ref_n"] == 0
    assert not any(k.startswith(("ref:", "rated:")) for k in store)
    assert windows.trigger_state.examples_since_training == 0
    windows.apply(predicted("1"), now=0)  # in flight from the old champion
    assert windows.meta["ref_n"] == 0


def test_thumbs_count_per_bucket_and_a_re_rating_replaces() -> None:
    windows = DriftWindows({}, SPEC)
    for i in range(39):
        windows.apply(predicted(), now=0)
        windows.apply(rated(f"r{i}", down=i % 10 == 0), now=0)
    windows.apply(rated("r1", down=True), now=0)  # re-rated during the reference: replaces
    windows.apply(predicted(), now=0)  # the 40th: the reference is full
    assert windows.meta["ref_thumbs"] == [5, 39]
    for i in range(20):
        windows.apply(predicted(), now=1)
        windows.apply(rated(f"c{i}", down=True), now=1)
        windows.apply(rated(f"c{i}", down=False), now=1)  # changed their mind
    closed = windows.close()
    assert (closed.reference_thumbs.down, closed.reference_thumbs.total) == (5, 39)
    assert (closed.current_thumbs.down, closed.current_thumbs.total) == (0, 20)
    assert windows.meta["cur_thumbs"] == [0, 0]


def test_unknown_record_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown window record kind"):
        DriftWindows({}, SPEC).apply({"kind": "nope"}, now=0)
