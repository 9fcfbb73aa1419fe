"""Reference and current windows of traffic, kept in a key-value store (a faust table).

The join agents (one per partition, on any worker) forward a small record per new
prediction and per rating to one single-partition topic, so exactly one worker sees the
whole stream in order and owns the windows. Its state lives in a changelog-backed table
under small keys (one row per key), so a restarted worker resumes mid-window:

``meta``         the phase, the reference version, counts, thumbs counts, the window index
``ref:<i>``      the i-th reference row
``cur:<i>``      the i-th row of the open window
``rated:<id>``   the bucket and rating of a feedback id (a re-rating replaces, not adds)
``trigger``      the trigger policy's state (services/monitor/triggers.py)

The reference is the first ``reference_size`` predictions the champion answered after its
promotion (the monitor's first version seen, before any promotion). Predictions of other
versions (still in flight during a switch) belong to no window. A window closes at
``window_size`` predictions or ``window_minutes`` after its first one, whichever is first.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from services.common.events import ExampleEvent, PredictionEvent
from services.common.task import DriftSpec, TaskObjective
from services.monitor.drift import Row, ThumbsCount
from services.monitor.triggers import TriggerState, on_promotion

REFERENCE, CURRENT = "reference", "current"


def prediction_record(p: PredictionEvent, task: TaskObjective) -> dict[str, Any]:
    row = asdict(Row.of(p, task))
    return {
        "kind": "prediction",
        "model_version": p.model_version,
        "at": p.occurred_at.isoformat(),
        "row": row,
    }


def rating_record(example: ExampleEvent) -> dict[str, Any]:
    return {
        "kind": "rating",
        "model_version": example.model_version,
        "feedback_id": example.feedback_id,
        "down": example.rating == "down",
        "reviewer": example.label_source == "reviewer",
        "labeled": example.rating == "up" or bool(example.correction),
    }


def reset_record(version: str) -> dict[str, Any]:
    return {"kind": "reset", "model_version": version}


def _row(raw: dict[str, Any]) -> Row:
    return Row(**{**raw, "prompt_words_list": tuple(raw["prompt_words_list"])})


@dataclass(frozen=True)
class ClosedWindow:
    """What a closed window hands to the drift tests."""

    index: int
    version: str
    reference: list[Row]
    current: list[Row]
    reference_thumbs: ThumbsCount
    current_thumbs: ThumbsCount
    start: datetime
    end: datetime


class DriftWindows:
    """The window state machine over ``store``; every change is written back as a key."""

    def __init__(self, store: MutableMapping[str, Any], spec: DriftSpec) -> None:
        self.store = store
        self.spec = spec

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.store.get("meta") or self._fresh_meta(None, index=0))

    @staticmethod
    def _fresh_meta(version: str | None, index: int) -> dict[str, Any]:
        return {
            "version": version,
            "phase": REFERENCE,
            "ref_n": 0,
            "cur_n": 0,
            "cur_opened_at": None,
            "cur_start": None,
            "cur_end": None,
            "ref_thumbs": [0, 0],
            "cur_thumbs": [0, 0],
            "index": index,
        }

    @property
    def trigger_state(self) -> TriggerState:
        return TriggerState.from_json(self.store.get("trigger"))

    def save_trigger_state(self, state: TriggerState) -> None:
        self.store["trigger"] = state.to_json()

    def apply(self, record: dict[str, Any], now: float) -> None:
        """One record from the window topic (``now``: processing time, seconds)."""
        kind = record["kind"]
        if kind == "prediction":
            self._on_prediction(record, now)
        elif kind == "rating":
            self._on_rating(record)
        elif kind == "reset":
            self._on_reset(record["model_version"])
        elif kind != "tick":
            raise ValueError(f"unknown window record kind {kind!r}")

    def _on_prediction(self, record: dict[str, Any], now: float) -> None:
        meta = self.meta
        if meta["version"] is None:
            meta["version"] = record["model_version"]  # first start: adopt what is served
        if record["model_version"] != meta["version"]:
            return
        if meta["phase"] == REFERENCE:
            self.store[f"ref:{meta['ref_n']}"] = record["row"]
            meta["ref_n"] += 1
            if meta["ref_n"] >= self.spec.reference_size:
                meta["phase"] = CURRENT
        else:
            if meta["cur_n"] == 0:
                meta["cur_opened_at"], meta["cur_start"] = now, record["at"]
            self.store[f"cur:{meta['cur_n']}"] = record["row"]
            meta["cur_n"] += 1
            meta["cur_end"] = record["at"]
        self.store["meta"] = meta

    def _on_rating(self, record: dict[str, Any]) -> None:
        state = self.trigger_state
        state.examples_since_training += 1
        if state.episode_start is not None and record.get("labeled"):
            state.labels_in_episode += 1
        self.save_trigger_state(state)
        meta = self.meta
        if record["model_version"] != meta["version"] or record.get("reviewer"):
            return  # reviewers' labels are not users' thumbs: not in the thumbs-down rate
        bucket = "ref" if meta["phase"] == REFERENCE else "cur"
        key = f"rated:{record['feedback_id']}"
        previous = self.store.get(key)
        thumbs = meta[f"{bucket}_thumbs"]
        if previous and previous["bucket"] == bucket:  # a re-rating replaces its earlier one
            thumbs[0] -= int(previous["down"])
            thumbs[1] -= 1
        thumbs[0] += int(record["down"])
        thumbs[1] += 1
        self.store[key] = {"bucket": bucket, "down": record["down"]}
        self.store["meta"] = meta

    def _on_reset(self, version: str) -> None:
        index = self.meta["index"]
        for key in [k for k in self.store if k.startswith(("ref:", "cur:", "rated:"))]:
            del self.store[key]
        self.store["meta"] = self._fresh_meta(version, index=index)
        state = self.trigger_state
        on_promotion(state)
        self.save_trigger_state(state)

    def due(self, now: float) -> bool:
        meta = self.meta
        if meta["phase"] != CURRENT or meta["cur_n"] == 0:
            return False
        timed_out = now - meta["cur_opened_at"] >= self.spec.window_minutes * 60
        return bool(meta["cur_n"] >= self.spec.window_size or timed_out)

    def close(self) -> ClosedWindow:
        """Hand out the open window and start the next one (the reference stays)."""
        meta = self.meta
        closed = ClosedWindow(
            index=meta["index"],
            version=meta["version"],
            reference=[_row(self.store[f"ref:{i}"]) for i in range(meta["ref_n"])],
            current=[_row(self.store[f"cur:{i}"]) for i in range(meta["cur_n"])],
            reference_thumbs=ThumbsCount(*meta["ref_thumbs"]),
            current_thumbs=ThumbsCount(*meta["cur_thumbs"]),
            start=datetime.fromisoformat(meta["cur_start"]),
            end=datetime.fromisoformat(meta["cur_end"]),
        )
        for i in range(meta["cur_n"]):
            del self.store[f"cur:{i}"]
        for key in [k for k in self.store if k.startswith("rated:")]:
            if self.store[key]["bucket"] == "cur":
                del self.store[key]
        meta.update(cur_n=0, cur_opened_at=None, cur_start=None, cur_end=None)
        meta.update(cur_thumbs=[0, 0], index=meta["index"] + 1)
        self.store["meta"] = meta
        return closed
