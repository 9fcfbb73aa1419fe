"""The window state machine over a plain dict (the worker runs it over a faust table)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from refinery.common.events import AlertEvent, DriftMetric, PredictionEvent
from refinery.common.task import DriftSpec, TaskObjective
from refinery.monitor.notices import NoticePolicy
from refinery.monitor.windows import (
    Change,
    DriftWindows,
    prediction_record,
    rejection_record,
    reset_record,
)

TASK = TaskObjective(
    name="t", kind="classification", prompt_template="Ticket: {text}\nTeam:", labels=["a", "b"]
)
SPEC = DriftSpec(window_size=20, window_minutes=1, reference_size=40, min_examples=0)
#: The tests of a window (what severity is judged against): one drifted column is a warning.
METRICS = [
    DriftMetric(column=c, method="chi2", score=0.5, threshold=0.001, drifted=False)
    for c in ("segment", "prompt_length", "latency_ms", "label", "prompt_words", "answer_kind")
]


_BUCKETS = itertools.count()


def predicted(version: str = "1", text: str = "my order is late") -> dict[str, Any]:
    """A block of one prediction, as a keeper of the only partition sends it."""
    bucket = next(_BUCKETS)
    predictions = [prediction(version, text)]
    return {
        "kind": "block",
        "partition": 0,
        "round": bucket,
        "part": 0,
        "through": bucket,
        "sealed": bucket,
        "predictions": predictions,
    }


def prediction(version: str = "1", text: str = "my order is late") -> dict[str, Any]:
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


def rated(feedback_id: str, down: bool, version: str = "1", key: str = "") -> dict[str, Any]:
    """A rating record as the join forwards it: a new rating event each call."""
    return {
        "kind": "rating",
        "model_version": version,
        "feedback_id": feedback_id,
        "event_id": str(uuid.uuid4()),
        "down": down,
        "key_id": key,
        "labeled": not down,
    }


def with_reference(store: dict[str, Any] | None = None) -> DriftWindows:
    windows = DriftWindows({} if store is None else store, SPEC)
    for _ in range(SPEC.reference_size):
        windows.apply(predicted(), now=0)
    return windows


def test_reference_fills_first_then_windows_close_by_count() -> None:
    store: dict[str, Any] = {}
    windows = DriftWindows(store, SPEC)
    changes = [windows.apply(predicted(), now=0) for _ in range(40)]
    assert changes[-2:] == [Change.ADDED, Change.REFERENCE_FULL]
    assert windows.state.phase == "current"
    for i in range(20):
        assert not windows.due(now=1)
        windows.apply(predicted(), now=1 + i)
    assert windows.due(now=21)
    closed = windows.closing()
    assert (closed.index, len(closed.reference), len(closed.current)) == (0, 40, 20)
    outbox = windows.close(closed, [], [])
    assert (outbox.index, outbox.alerts, outbox.trigger) == (0, (), None)
    assert not windows.due(now=21)
    assert not any(k.startswith("cur:") for k in store)
    assert windows.state.index == 1


def test_a_window_closes_by_time_when_traffic_is_thin() -> None:
    windows = with_reference()
    windows.apply(predicted(), now=100)
    assert not windows.due(now=159)
    windows.apply({"kind": "tick"}, now=160)
    assert windows.due(now=160)
    assert len(windows.closing().current) == 1


def test_other_versions_are_in_no_window_and_a_promotion_resets() -> None:
    store: dict[str, Any] = {}
    windows = DriftWindows(store, SPEC)
    windows.apply(predicted("1"), now=0)
    windows.apply(predicted("2"), now=0)  # not the version the monitor adopted
    assert windows.state.ref_n == 1
    windows.apply(rated("f1", down=True), now=0)
    assert windows.state.trigger.examples_since_training == 1
    assert windows.apply(reset_record("2"), now=0) is Change.RESET
    assert windows.state.version == "2" and windows.state.ref_n == 0
    assert not any(k.startswith(("ref:", "rated:", "id:")) for k in store)
    assert windows.state.trigger.examples_since_training == 0
    windows.apply(predicted("1"), now=0)  # in flight from the old champion
    assert windows.state.ref_n == 0


def test_thumbs_count_per_bucket_and_a_re_rating_replaces() -> None:
    windows = DriftWindows({}, SPEC)
    for i in range(39):
        windows.apply(predicted(), now=0)
        windows.apply(rated(f"r{i}", down=i % 10 == 0), now=0)
    windows.apply(rated("r1", down=True), now=0)  # re-rated during the reference: replaces
    windows.apply(predicted(), now=0)  # the 40th: the reference is full
    assert windows.state.ref_thumbs == [5, 39]
    for i in range(20):
        windows.apply(predicted(), now=1)
        windows.apply(rated(f"c{i}", down=True), now=1)
        windows.apply(rated(f"c{i}", down=False), now=1)  # changed their mind
    closed = windows.closing()
    windows.close(closed, [], [])
    assert (closed.reference_thumbs.down, closed.reference_thumbs.total) == (5, 39)
    assert (closed.current_thumbs.down, closed.current_thumbs.total) == (0, 20)
    assert windows.state.cur_thumbs == [0, 0]


def test_thumbs_are_counted_per_key_too() -> None:
    windows = DriftWindows({}, SPEC)
    for _ in range(SPEC.reference_size - 1):
        windows.apply(predicted(), now=0)
    for i in range(4):
        windows.apply(rated(f"a{i}", down=i == 0, key="app"), now=0)
    windows.apply(predicted(), now=0)  # the reference is full: ratings go to the window
    windows.apply(predicted(), now=1)
    for i in range(3):
        windows.apply(rated(f"f{i}", down=True, key="flood"), now=1)
    windows.apply(rated("f0", down=False, key="app"), now=1)  # re-rated under another key
    closed = windows.closing()
    assert closed.reference_thumbs.by_key == (("app", 1, 4),)
    assert closed.current_thumbs.by_key == (("app", 0, 1), ("flood", 2, 2))
    assert (closed.current_thumbs.down, closed.current_thumbs.total) == (2, 3)


def test_a_prediction_forwarded_twice_counts_once() -> None:
    windows = DriftWindows({}, SPEC)
    record = predicted()
    windows.apply(record, now=0)
    assert windows.apply(record, now=0) is Change.REPLAYED  # the join re-forwarded it
    assert windows.state.ref_n == 1
    windows = with_reference()
    record = predicted()
    windows.apply(record, now=1)
    windows.apply(record, now=2)
    assert windows.state.cur_n == 1


def test_the_same_rating_twice_counts_once_in_thumbs_and_in_the_trigger_state() -> None:
    windows = with_reference()
    windows.apply(predicted(), now=1)
    rating = rated("f1", down=True)
    windows.apply(rating, now=1)
    assert windows.apply(rating, now=1) is Change.REPLAYED
    state = windows.state
    assert state.cur_thumbs == [1, 1]
    assert state.trigger.examples_since_training == 1


def test_a_re_rating_adds_no_example_and_no_label_to_the_trigger_state() -> None:
    """One user clicking again and again is one example and one label: a flood of
    re-ratings of a few answers (a bench's, a retrying app's) cannot complete a trigger's
    labels alone."""
    spec = SPEC.model_copy(update={"persist_windows": 1, "min_new_labels": 5})
    windows = DriftWindows({}, spec)
    for _ in range(spec.reference_size):
        windows.apply(predicted(), now=0)
    for _ in range(spec.window_size):
        windows.apply(predicted(), now=1)
    windows.delivered(windows.close(windows.closing(), ["segment"], []))  # episode begins
    windows.apply(predicted(), now=2)

    def counts() -> tuple[int, int, dict[str, int]]:
        trigger = windows.state.trigger
        assert trigger.episode_start is not None
        return trigger.examples_since_training, trigger.labels_in_episode, trigger.labels_by_key

    assert counts() == (0, 0, {})
    for _ in range(50):
        for i in range(4):
            windows.apply(rated(f"r{i}", down=False, key="app"), now=2)
    assert counts() == (4, 4, {"app": 4})
    assert windows.outbox is None  # 4 labels, not 200
    windows.apply(rated("r0", down=True, key="app"), now=2)  # no correction: no label now
    assert counts() == (4, 3, {"app": 3})
    windows.apply(rated("r0", down=False, key="other"), now=2)  # a label again, once
    windows.apply(rated("r0", down=False, key="other"), now=2)
    assert counts() == (4, 4, {"app": 3, "other": 1})
    windows.apply(rated("r4", down=False, key="app"), now=2)  # a fifth rating id: asks
    asked = windows.outbox
    assert asked is not None and asked.trigger is not None
    assert asked.trigger.evidence["labels_counted"] == 5


def test_a_record_re_read_at_its_position_changes_nothing() -> None:
    windows = DriftWindows({}, SPEC)
    records = [predicted() for _ in range(5)] + [reset_record("1")]
    for position, record in enumerate(records):
        windows.apply(record, now=0, position=position)
    windows.apply(predicted(), now=0, position=6)
    before = windows.state
    for position, record in enumerate(records):  # a restarted worker reads them again
        assert windows.apply(record, now=0, position=position) is Change.REPLAYED
    assert windows.state == before and before.ref_n == 1  # the reset was not re-run


def test_a_closed_window_replayed_does_not_fill_or_close_another() -> None:
    windows = with_reference()
    current = [predicted() for _ in range(20)]
    ratings = [rated(f"c{i}", down=i < 5) for i in range(20)]
    for p, r in zip(current, ratings, strict=True):
        windows.apply(p, now=1)
        windows.apply(r, now=1)
    closed = windows.closing()
    windows.close(closed, ["segment"], [])
    examples = windows.state.trigger.examples_since_training
    for p, r in zip(current, ratings, strict=True):  # re-forwarded after a crash
        assert windows.apply(p, now=2) is Change.REPLAYED
        assert windows.apply(r, now=2) is Change.REPLAYED
    state = windows.state
    assert (state.index, state.cur_n, state.cur_thumbs) == (1, 0, [0, 0])
    assert state.trigger.examples_since_training == examples
    assert not windows.due(now=1000)


def test_a_crash_before_the_close_is_recorded_closes_the_same_window_alike() -> None:
    spec = SPEC.model_copy(update={"persist_windows": 1, "min_new_labels": 0})
    store: dict[str, Any] = {}
    windows = DriftWindows(store, spec)
    for _ in range(40):
        windows.apply(predicted(), now=0)
    for i in range(20):
        windows.apply(predicted(), now=1)
        windows.apply(rated(f"c{i}", down=True), now=1)
    saved = dict(store)
    first = windows.close(windows.closing(), ["segment"], alert_of(windows))
    again = DriftWindows(saved, spec)  # the table as the crash left it: not closed yet
    second = again.close(again.closing(), ["segment"], alert_of(again))
    assert first.trigger is not None and second.trigger is not None
    assert first.trigger.event_id == second.trigger.event_id  # resent, consumers dedup
    assert first.trigger.trigger_id == second.trigger.trigger_id
    assert first.alerts == second.alerts and first.index == second.index == 0
    assert again.state.trigger == windows.state.trigger  # decided once, not twice
    assert again.state.trigger.consecutive == 1


def test_a_crash_after_the_close_sends_its_outbox_and_never_closes_it_again() -> None:
    spec = SPEC.model_copy(update={"persist_windows": 1, "min_new_labels": 0})
    store: dict[str, Any] = {}
    windows = DriftWindows(store, spec)
    for position in range(60):
        windows.apply(predicted(), now=1, position=position)
    outbox = windows.close(windows.closing(), ["segment"], alert_of(windows))
    restarted = DriftWindows(store, spec)  # the close is recorded, the sends may not be
    assert restarted.outbox == outbox and not restarted.due(now=1000)
    restarted.delivered(outbox)
    assert restarted.outbox is None and restarted.state.index == 1
    assert restarted.state.trigger.consecutive == 1  # the decision was taken once


class Crash(Exception):
    pass


class CrashingStore(dict[str, Any]):
    """A table whose worker dies after ``writes`` more writes (sets or deletes): what
    reached the changelog before a SIGKILL."""

    writes: int | None = None

    def _count(self) -> None:
        if self.writes is not None:
            if self.writes == 0:
                raise Crash
            self.writes -= 1

    def __setitem__(self, key: str, value: Any) -> None:
        self._count()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._count()
        super().__delitem__(key)


def test_a_crash_between_the_writes_of_a_record_is_redone_once() -> None:
    store = CrashingStore()
    windows = DriftWindows(store, SPEC)
    record = predicted()
    store.writes = 1  # the block is written, the meta is not
    with pytest.raises(Crash):
        windows.apply(record, now=0, position=0)
    store.writes = None
    assert windows.apply(record, now=0, position=0) is Change.ADDED  # redone, not dropped
    assert windows.state.ref_n == 1
    assert windows.apply(record, now=0, position=1) is Change.REPLAYED


def test_a_rating_cut_short_by_a_crash_is_counted_once() -> None:
    store = CrashingStore()
    windows = with_reference(store)
    windows.apply(predicted(), now=1)
    rating = rated("f1", down=True)
    store.writes = 0  # nothing of it reaches the table
    with pytest.raises(Crash):
        windows.apply(rating, now=1)
    store.writes = 1  # its entry, not the meta
    with pytest.raises(Crash):
        windows.apply(rating, now=1)
    store.writes = None
    assert windows.apply(rating, now=1) is Change.RATED
    assert windows.apply(rating, now=1) is Change.REPLAYED
    assert windows.state.cur_thumbs == [1, 1]
    assert windows.state.trigger.examples_since_training == 1


def test_a_table_of_the_first_layout_carries_on() -> None:
    """A worker upgraded mid-window: meta without ids or positions, the trigger state in a
    row of its own, rated entries by bucket."""
    store: dict[str, Any] = {
        "meta": {
            "version": "1",
            "phase": "current",
            "ref_n": 40,
            "cur_n": 0,
            "cur_opened_at": None,
            "cur_start": None,
            "cur_end": None,
            "ref_thumbs": [2, 10],
            "cur_thumbs": [0, 0],
            "index": 7,
        },
        "trigger": {
            "consecutive": 1,
            "episode_start": None,
            "examples_since_training": 10,
            "last_trigger_at": None,
            "drifted_columns": ["segment"],
        },
        "rated:old": {"bucket": "ref", "down": True},
    }
    store |= {f"ref:{i}": prediction()["row"] for i in range(40)}
    windows = DriftWindows(store, SPEC)
    assert windows.state.trigger.consecutive == 1
    for position in range(20):
        windows.apply(predicted(), now=1, position=100 + position)
    closed = windows.closing()
    assert (closed.index, len(closed.reference)) == (7, 40)
    windows.close(closed, [], [])
    assert "trigger" not in store and "rated:old" not in store
    assert windows.state.trigger.consecutive == 0 and windows.state.index == 8


def test_a_crash_while_collecting_a_closed_window_leaves_nothing_that_counts() -> None:
    store = CrashingStore()
    windows = with_reference(store)
    blocks = []
    for index in range(3):
        current = [predicted() for _ in range(20)]
        blocks.append({f"blk:{r['round']}:-1:0" for r in current})  # as merged and taken
        for record in current:
            windows.apply(record, now=1)
        if index == 1:  # its close deletes window 0's blocks (the last closed one's stay)
            store.writes = 3  # the close's meta and two deletions
            with pytest.raises(Crash):
                windows.close(windows.closing(), [], [])
            store.writes = None
            assert windows.state.index == 2 and blocks[0] & set(store)
            continue
        closed = windows.closing()
        assert (closed.index, len(closed.current)) == (index, 20)
        windows.close(closed, [], [])
    assert not (blocks[0] | blocks[1]) & set(store) and blocks[2] <= set(store)


def test_unknown_record_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown window record kind"):
        DriftWindows({}, SPEC).apply({"kind": "nope"}, now=0)


def alert_of(windows: DriftWindows) -> list[AlertEvent]:
    """The alerts the worker would build for the open window (id derived from the window)."""
    closed = windows.closing()
    alert = AlertEvent(
        event_id=f"alert-{closed.version}-{closed.index}",
        occurred_at=datetime(2026, 11, 29, tzinfo=UTC),
        window_start=closed.start,
        window_end=closed.end,
        window_size=len(closed.current),
        drifted_columns=["segment"],
        metrics=[],
        reference_version=closed.version,
    )
    return [alert]


def test_a_lagging_promotion_gets_a_refinement_trigger_through_the_windows() -> None:
    """The whole path: stable windows set the bar, a drift trigger keeps it, the promoted
    version's ratings (re-ratings replacing, other versions not counted) are tested at a
    close, and the refinement trigger goes out in that close's outbox."""
    spec = SPEC.model_copy(
        update={"persist_windows": 2, "min_new_labels": 15, "refinement_rounds": 1}
    )
    windows = DriftWindows({}, spec)

    def window(version: str, downs: int, drifted: list[str]) -> Any:
        for i in range(spec.window_size):
            windows.apply(predicted(version), now=1)
            rating = f"{version}-{windows.state.index}-{i}"
            windows.apply(rated(rating, down=i < downs, version=version), now=1)
        return windows.close(windows.closing(), drifted, [])

    for i in range(spec.reference_size):
        windows.apply(predicted(), now=0)
        windows.apply(rated(f"ref{i}", down=False), now=0)
    assert window("1", downs=0, drifted=[]).trigger is None  # stable: part of the bar
    assert window("1", downs=1, drifted=["segment"]).trigger is None  # once is no episode
    drift = window("1", downs=1, drifted=["segment"]).trigger
    assert drift is not None and drift.trigger_id.startswith("drift-v1-")
    assert windows.state.trigger.bar == [0, 60]  # the reference and the stable window
    windows.apply(reset_record("2"), now=2)
    for i in range(spec.reference_size):  # v2's reference: 8 of 40 thumbs down
        windows.apply(predicted("2"), now=2)
        windows.apply(rated(f"v2ref{i}", down=i % 5 == 0, version="2"), now=2)
    windows.apply(rated("v2ref1", down=True, version="2"), now=2)  # re-rated: replaces
    windows.apply(rated("old", down=True, version="1"), now=2)  # the old champion's answer
    assert windows.state.trigger.since == [9, 40]
    refine = window("2", downs=4, drifted=[]).trigger
    assert refine is not None and refine.trigger_id.startswith("refine-v2-")
    assert refine.window_start == drift.window_start


def test_a_rejection_lets_the_drift_ask_again_through_the_windows() -> None:
    """A drift trigger, its challenger rejected (the models topic's event, as a window
    record), and the retry once the episode's labels have doubled, within the cooldown."""
    spec = SPEC.model_copy(update={"persist_windows": 2, "min_new_labels": 20})
    windows = DriftWindows({}, spec)
    for _ in range(spec.reference_size):
        windows.apply(predicted(), now=0)

    def window(ups: int) -> Any:
        for i in range(spec.window_size):
            windows.apply(predicted(), now=1)
            feedback = f"{windows.state.index}-{i}"
            windows.apply(rated(feedback, down=i >= ups), now=1)
        return windows.close(windows.closing(), ["segment"], [])

    assert window(ups=20).trigger is None  # labels count from the episode's first window on
    drift = window(ups=20).trigger  # 20 labels in the episode
    assert drift is not None and drift.trigger_id.startswith("drift-v1-")
    assert window(ups=19).trigger is None  # 39 labels, and no rejection: the cooldown holds
    assert windows.apply(rejection_record("2"), now=2, position=10_000) is Change.REJECTED
    assert windows.apply(rejection_record("2"), now=2, position=10_000) is Change.REPLAYED
    assert window(ups=0).trigger is None  # 39 < 40
    retry = window(ups=1).trigger  # 40 labels: doubled since the trigger
    assert retry is not None and retry.trigger_id == f"{drift.trigger_id}-retry1"


def test_a_persisted_drift_asks_when_its_last_label_comes_not_at_the_next_close() -> None:
    """The trigger goes in the outbox with the rating that completes the labels, mid-window;
    sent (delivered), the close asks nothing more; not sent yet, the close carries it."""
    spec = SPEC.model_copy(update={"persist_windows": 2, "min_new_labels": 10})

    def drifted(windows: DriftWindows, ups: int = 0) -> Any:
        for i in range(spec.window_size):
            windows.apply(predicted(), now=1)
            windows.apply(rated(f"{windows.state.index}-{i}", down=i >= ups), now=1)
        return windows.close(windows.closing(), ["segment"], [])

    for deliver in (True, False):
        windows = DriftWindows({}, spec)
        for _ in range(spec.reference_size):
            windows.apply(predicted(), now=0)
        assert drifted(windows).trigger is None  # the episode's first window
        sent = drifted(windows)
        assert sent.trigger is None  # persisted, but no label yet
        windows.delivered(sent)
        index = windows.state.index
        for i in range(9):
            windows.apply(predicted(), now=2)
            windows.apply(rated(f"late-{i}", down=False), now=2)
        assert windows.outbox is None  # 9 labels
        windows.apply(predicted(), now=2)
        windows.apply(rated("late-9", down=False), now=2)
        asked = windows.outbox  # the 10th label: asked at once, in the open window
        assert asked is not None and asked.index == index and asked.trigger is not None
        assert asked.alerts == () and asked.trigger.evidence["labels_counted"] == 10
        if deliver:
            windows.delivered(asked)
            assert windows.outbox is None
        while windows.state.cur_n < spec.window_size:
            windows.apply(predicted(), now=2)
        closed = windows.close(windows.closing(), ["segment"], [])
        assert closed.trigger == (None if deliver else asked.trigger)


def block(partition: int, bucket: int, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "kind": "block",
        "partition": partition,
        "round": bucket,
        "part": 0,
        "through": bucket,
        "sealed": bucket,
        "predictions": rows,
    } | extra


def test_blocks_are_taken_in_bucket_then_partition_order_whatever_order_they_come_in() -> None:
    """The windows of three partitions' blocks are the same whichever worker sent which
    first: the same predictions in each window, in the same order."""
    spec = SPEC.model_copy(update={"reference_size": 40, "window_size": 20})
    rows = {(b, p): [prediction() for _ in range(5)] for b in range(6) for p in range(3)}
    blocks = [block(p, b, rows[b, p]) for (b, p) in rows]

    def windows_of(order: list[dict[str, Any]]) -> list[list[str]]:
        windows, closed = DriftWindows({}, spec, partitions=3), []
        for record in order:
            windows.apply(record, now=1)
            while windows.due(now=1):
                closed.append([row["prediction_id"] for row in window_rows(windows)])
                windows.close(windows.closing(), [], [])
                windows.absorb(now=1)
        return closed

    by_partition = sorted(blocks, key=lambda b: (b["partition"], b["round"]))
    reversed_partitions = sorted(blocks, key=lambda b: (-b["partition"], b["round"]))
    first = windows_of(blocks)
    assert first == windows_of(by_partition) == windows_of(reversed_partitions)
    merged = [r["prediction_id"] for b in range(6) for p in range(3) for r in rows[b, p]]
    assert first == [merged[40:60], merged[60:80]]  # and the last 10: not a window yet


def window_rows(windows: DriftWindows) -> list[dict[str, Any]]:
    return windows._rows(windows.state.cur_slices)


def test_a_block_waits_for_every_partition_and_a_prediction_sent_again_counts_once() -> None:
    windows = DriftWindows({}, SPEC, partitions=2)
    rows = [prediction() for _ in range(3)]
    assert windows.apply(block(0, 7, rows[:2]), now=0) is Change.WAITING
    assert windows.state.ref_n == 0
    assert windows.apply(block(1, 7, []), now=0) is Change.ADDED  # partition 1: empty bucket
    assert windows.state.ref_n == 2
    assert windows.apply(block(0, 7, rows[:2]), now=0) is Change.REPLAYED  # sent again
    # A crash lost a join state, not the row: the prediction comes again, in a later block.
    windows.apply(block(0, 8, [rows[1], rows[2]]), now=0)
    windows.apply(block(1, 8, []), now=0)
    assert windows.state.ref_n == 3


def test_a_bucket_is_taken_in_time_order_across_its_partitions() -> None:
    """A burst: each partition's rows of one bucket interleave in time, as they were sent."""
    windows = DriftWindows({}, SPEC, partitions=2)
    rows = [prediction() | {"t": 50 + i / 10} for i in range(8)]
    windows.apply(block(0, 50, rows[0::2]), now=0)  # 50.0, 50.2, ...
    windows.apply(block(1, 50, rows[1::2]), now=0)  # 50.1, 50.3, ...
    taken = windows._rows(windows.state.ref_slices)
    assert [r["prediction_id"] for r in taken] == [r["prediction_id"] for r in rows]


def test_the_alert_episodes_are_committed_with_the_close_and_outlive_a_promotion() -> None:
    """Ops hear of the first drifted window only; a crash before a close decides alike; a
    new champion keeps the episode until its own windows are stable; latency drifting on
    does not keep the data's episode open."""
    store: dict[str, Any] = {}
    windows = DriftWindows(store, SPEC, notices=NoticePolicy(repeat_minutes=60, resolve_after=2))

    def fill(version: str = "1") -> None:
        for _ in range(SPEC.window_size):
            windows.apply(predicted(version), now=1)

    def close_one(drifted: list[str], version: str = "1") -> dict[str, str | None]:
        fill(version)
        closed = windows.closing()
        decisions = windows.notice(closed, drifted, METRICS)
        windows.delivered(windows.close(closed, drifted, [], decisions))
        return {kind: decision.notice for kind, decision in decisions.items()}

    for _ in range(SPEC.reference_size):
        windows.apply(predicted(), now=0)
    assert close_one(["segment"]) == {"quality": "opened"}
    fill()
    again = DriftWindows(dict(store), SPEC, notices=windows.notices)  # as a crash would leave it
    closed = windows.closing()
    decisions = windows.notice(closed, ["segment", "latency_ms"], METRICS)
    assert {k: d.notice for k, d in decisions.items()} == {
        "quality": None,
        "operational": "opened",
    }
    windows.delivered(windows.close(closed, ["segment", "latency_ms"], [], decisions))
    assert again.notice(again.closing(), ["segment", "latency_ms"], METRICS) == decisions
    assert again.notice(again.closing(), ["segment", "prompt_length"], METRICS)[
        "quality"
    ].notice == ("escalated")
    windows.apply(reset_record("2"), now=2)
    assert set(windows.state.alerting) == {"quality", "operational"}  # a promotion ends none
    for _ in range(SPEC.reference_size):
        windows.apply(predicted("2"), now=2)
    # Latency goes on drifting (a load test); the data's episode ends all the same.
    assert close_one(["latency_ms"], "2") == {"quality": None, "operational": None}
    assert close_one(["latency_ms"], "2") == {"quality": "resolved", "operational": None}
    assert set(windows.state.alerting) == {"operational"}
    assert set(DriftWindows(store, SPEC).state.alerting) == {"operational"}  # committed
    assert close_one([], "2") == {"operational": None}
    assert close_one([], "2") == {"operational": "resolved"}
    assert windows.state.alerting == {}


def test_an_episode_kept_before_episode_kinds_is_read_as_its_columns_kind() -> None:
    store: dict[str, Any] = {}
    windows = DriftWindows(store, SPEC)
    windows.apply(predicted(), now=0)
    began = "2026-11-29T10:00:00+00:00"
    for columns, kind in ((["latency_ms"], "operational"), (["latency_ms", "segment"], "quality")):
        episode = {"began": began, "severity": "warning", "columns": columns}
        store["meta"] = {
            **store["meta"],
            "alerting": {**episode, "notified_at": began, "stable": 0},
        }
        [(read, kept)] = DriftWindows(store, SPEC).state.alerting.items()
        assert read == kind and kept.columns == tuple(columns)


def test_an_outbox_kept_with_one_alert_is_read_with_it() -> None:
    """A close recorded before episode kinds, whose alert a crash left unsent."""
    store: dict[str, Any] = {}
    windows = DriftWindows(store, SPEC)
    for _ in range(SPEC.reference_size + SPEC.window_size):
        windows.apply(predicted(), now=0)
    [alert] = alert_of(windows)
    v2 = {**alert.model_dump(mode="json", exclude={"episode_kind"}), "schema_version": 2}
    for kept, alerts in ((v2, (alert,)), (None, ())):
        store["meta"] = {**store["meta"], "outbox": {"index": 0, "alert": kept, "trigger": None}}
        outbox = DriftWindows(store, SPEC).outbox
        assert outbox is not None and outbox.alerts == alerts
