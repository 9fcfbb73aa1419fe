"""Reference and current windows of traffic, kept in a key-value store (a faust table).

The rows come in blocks (refinery/monitor/blocks.py): each partition's keeper, beside the
join on whichever worker reads that partition, gathers its predictions by their time and
sends a block per bucket (in parts when busy). One worker owns this single-partition topic
and takes a bucket once every partition has closed it, its rows in time order (ties in
partition order): the order of predictions, and so every window, depends on each
partition's own order only, however many workers share the join. The rows stay in the
blocks; a window is a list of slices of them. Ratings come one by one, as the join pairs
them. The state lives in a changelog-backed table under small keys, so a restarted worker
resumes mid-window:

``meta``                the window state (:class:`WindowState`): phase, counts, thumbs, the
                        window index, the slices, each partition's progress, the trigger
                        policy's state, the open alert episodes, the closed window's outbox
``blk:<b>:<p>:<part>``  the rows of a block: bucket ``b``, partition ``p`` (``-1``: all of
                        the bucket's blocks merged in time order, as the windows take it)
``rated:<feedback>``    the window, event id and rating of a feedback id (a re-rating
                        replaces its earlier one, in the thumbs and in the trigger's
                        examples and labels; the same rating replayed is ignored)

faust is at-least-once, so the same record can come twice: the windows re-read what they
applied before a crash (skipped by topic offset, ``position``), a keeper may send a block
again (skipped by bucket and part), and a prediction whose join state was lost comes again
in a later block (skipped by id, for the reference, the open window and the last closed
one). ``meta`` is written last and alone commits a record: a block or rated entry written by
a record that crashed before its commit is written again alike, or carries a later ``seq``
and counts as absent. A close is one ``meta`` write too (the next window, the trigger
decision, and an outbox with the alert and trigger to send), so a crash before it closes
the same window again, and a crash after it sends the outbox again; consumers dedup by
event id. A drift that has persisted and waits only for labels does not wait for the next
close: the record that brings the last label writes the trigger to the outbox with its
``meta``.

The reference is the first ``reference_size`` predictions the champion answered after its
promotion (the monitor's first version seen, before any promotion). Predictions of other
versions (still in flight during a switch) belong to no window. A window closes at
``window_size`` predictions or ``window_minutes`` after its first one, whichever is first.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from refinery.common.events import (
    EPISODE_KINDS,
    AlertEvent,
    DriftMetric,
    EpisodeKind,
    ExampleEvent,
    PredictionEvent,
    TriggerEvent,
    episode_kind,
    parse_versioned,
)
from refinery.common.task import DriftSpec, TaskObjective
from refinery.monitor.blocks import MAX_ROWS
from refinery.monitor.drift import Row, ThumbsCount
from refinery.monitor.notices import (
    AlertEpisode,
    Decision,
    NoticePolicy,
    decide_each,
    open_episodes,
)
from refinery.monitor.triggers import (
    TriggerState,
    on_champion_rating,
    on_labels,
    on_promotion,
    on_refinement_window,
    on_rejection,
    on_window,
)

REFERENCE, CURRENT = "reference", "current"
MERGED = -1  # the partition of a bucket's blocks merged in time order
# Not copied as they are (lists and dicts are copied, so a change is only a change once
# committed, never in the stored value).
_NESTED = ("trigger", "outbox", "alerting", "ref_thumbs", "cur_thumbs", "ref_keys", "cur_keys")
_LISTS = ("ref_slices", "cur_slices", "prev_slices", "pending")  # of lists: copied deeper
_DICTS = ("through", "last")
#: ``meta`` layout: 1 had no ids, positions or outbox, and the trigger state under ``trigger``;
#: 2 kept a row per prediction (``ref:<i>``, ``cur:<i>``) and an id entry per prediction.
STATE_SCHEMA = 3


def prediction_record(p: PredictionEvent, task: TaskObjective) -> dict[str, Any]:
    row = vars(Row.of(p, task)).copy()  # flat: asdict's deep copy cost the join 4%
    return {
        "kind": "prediction",
        "prediction_id": p.prediction_id,
        "model_version": p.model_version,
        "at": p.occurred_at.isoformat(),
        "row": row,
    }


def rating_record(example: ExampleEvent) -> dict[str, Any]:
    return {
        "kind": "rating",
        "model_version": example.model_version,
        "feedback_id": example.feedback_id,
        "event_id": example.event_id,  # derived from the feedback event: same on a replay
        "down": example.rating == "down",
        "key_id": example.key_id or "",  # whose ratings: the thumbs test weighs keys
        "reviewer": example.label_source == "reviewer",
        "labeled": example.rating == "up" or bool(example.correction),
    }


def reset_record(version: str, action: str = "promoted") -> dict[str, Any]:
    """A new champion: ``action`` is how it came (promoted, or rolled back to)."""
    return {"kind": "reset", "model_version": version, "action": action}


def rejection_record(version: str) -> dict[str, Any]:
    """A challenger was rejected: a drift episode that asked for it may ask again."""
    return {"kind": "rejected", "model_version": version}


def _row(raw: dict[str, Any]) -> Row:
    return Row(**{**raw, "prompt_words_list": tuple(raw["prompt_words_list"])})


class Change(Enum):
    """What a record did to the windows (the worker logs some of them)."""

    NONE = "none"  # a tick, or a prediction of another version
    WAITING = "waiting"  # a block kept until every partition has closed its bucket
    REPLAYED = "replayed"  # applied before: re-read, or re-forwarded by the join
    ADDED = "added"
    REFERENCE_FULL = "reference_full"  # the prediction that completed the reference
    RATED = "rated"
    RESET = "reset"
    REJECTED = "rejected"


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
    digest: str = ""  # of the current window's prediction ids, in order (the log names it)


@dataclass(frozen=True)
class Outbox:
    """A closed window's messages (or a trigger whose labels came in between windows),
    committed with the state and cleared once the broker has them: a crash in between
    sends them again (same event ids) rather than losing them."""

    index: int
    alerts: tuple[AlertEvent, ...]  # one per kind of episode (notices.py)
    trigger: TriggerEvent | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "alerts": [alert.model_dump(mode="json") for alert in self.alerts],
            "trigger": self.trigger.model_dump(mode="json") if self.trigger else None,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Outbox:
        trigger = raw["trigger"]
        # Written before episode kinds: one alert or none, under "alert".
        alerts = raw["alerts"] if "alerts" in raw else [a for a in [raw["alert"]] if a]
        return cls(
            index=raw["index"],
            alerts=tuple(parse_versioned(AlertEvent, a) for a in alerts),  # type: ignore[misc]
            trigger=TriggerEvent.model_validate(trigger) if trigger else None,
        )


@dataclass
class WindowState:
    """The ``meta`` row: all a record changes besides its own row and id entry."""

    version: str | None = None
    phase: str = REFERENCE
    epoch: int = 0  # one per reference (a reset starts the next): names its id entries
    index: int = 0  # the number of the open current window
    ref_n: int = 0
    cur_n: int = 0
    cur_opened_at: float | None = None  # processing time of the window's first prediction
    cur_start: str | None = None
    cur_end: str | None = None
    ref_thumbs: list[int] = field(default_factory=lambda: [0, 0])  # [down, total]
    cur_thumbs: list[int] = field(default_factory=lambda: [0, 0])
    # The same per API key fingerprint ("" for none): key -> [down, total].
    ref_keys: dict[str, list[int]] = field(default_factory=dict)
    cur_keys: dict[str, list[int]] = field(default_factory=dict)
    seq: int = -1  # position of the last record applied (its offset in the window topic)
    step: int = -1  # ratings applied: a rated entry of a later step was never committed
    previous: str | None = None  # the last closed window, whose ids are still kept
    # Rows as slices [block key, start, end] of blocks: the reference, the open window and
    # the last closed one (its ids still count, for a prediction that comes again).
    ref_slices: list[list[Any]] = field(default_factory=list)
    cur_slices: list[list[Any]] = field(default_factory=list)
    prev_slices: list[list[Any]] = field(default_factory=list)
    # Per partition: the last bucket it closed, and the last block [bucket, part] it sent.
    through: dict[str, int] = field(default_factory=dict)
    last: dict[str, list[int]] = field(default_factory=dict)
    pending: list[list[int]] = field(default_factory=list)  # blocks kept, [bucket, p, part]
    offset: int = 0  # rows of the first pending block already taken
    trigger: TriggerState = field(default_factory=TriggerState)
    outbox: Outbox | None = None
    # The drift episodes ops were told of, while open: one per kind (notices.py).
    alerting: dict[EpisodeKind, AlertEpisode] = field(default_factory=dict)

    @property
    def generation(self) -> str:
        """The window a prediction or rating arriving now belongs to."""
        return f"ref{self.epoch}" if self.phase == REFERENCE else f"cur{self.index}"

    @property
    def live(self) -> set[str]:
        """Windows whose id entries count: the reference, the open one, the last closed."""
        live = {f"ref{self.epoch}", self.generation}
        return live | {self.previous} if self.previous else live

    def reset(self, version: str, action: str = "promoted") -> None:
        """A new champion: a new reference, no open window (the count of windows goes on)."""
        fresh = WindowState(
            version=version,
            epoch=self.epoch + 1,
            index=self.index,
            seq=self.seq,
            step=self.step,
            through=self.through,
            last=self.last,
            pending=self.pending,
            offset=self.offset,
            trigger=self.trigger,
            outbox=self.outbox,
            alerting=self.alerting,  # the new champion's stable windows end them
        )
        self.__dict__.update(fresh.__dict__)
        on_promotion(self.trigger, action)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA,
            **{k: v for k, v in self.__dict__.items() if k not in _NESTED + _LISTS + _DICTS},
            **{k: [list(x) for x in getattr(self, k)] for k in _LISTS},
            **{k: dict(getattr(self, k)) for k in _DICTS},
            "ref_thumbs": list(self.ref_thumbs),
            "cur_thumbs": list(self.cur_thumbs),
            "ref_keys": {k: list(v) for k, v in self.ref_keys.items()},
            "cur_keys": {k: list(v) for k, v in self.cur_keys.items()},
            "trigger": self.trigger.to_json(),
            "outbox": self.outbox.to_json() if self.outbox else None,
            "alerting": {kind: episode.to_json() for kind, episode in self.alerting.items()},
        }

    @classmethod
    def from_json(
        cls, raw: dict[str, Any] | None, legacy_trigger: dict[str, Any] | None = None
    ) -> WindowState:
        """``legacy_trigger``: the ``trigger`` row of a schema-1 table."""
        if not raw:
            return cls(trigger=TriggerState.from_json(legacy_trigger))
        nested = _NESTED + _LISTS + _DICTS
        plain = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__ and k not in nested}
        outbox, alerting = raw.get("outbox"), raw.get("alerting")
        return cls(
            **plain,
            ref_slices=[list(x) for x in raw.get("ref_slices", [])],
            cur_slices=[list(x) for x in raw.get("cur_slices", [])],
            prev_slices=[list(x) for x in raw.get("prev_slices", [])],
            pending=[list(x) for x in raw.get("pending", [])],
            through=dict(raw.get("through", {})),
            last={k: list(v) for k, v in raw.get("last", {}).items()},
            # Copies: a change is only a change once committed, never in the stored value.
            ref_thumbs=list(raw["ref_thumbs"]),
            cur_thumbs=list(raw["cur_thumbs"]),
            ref_keys={k: list(v) for k, v in raw.get("ref_keys", {}).items()},
            cur_keys={k: list(v) for k, v in raw.get("cur_keys", {}).items()},
            trigger=TriggerState.from_json(raw.get("trigger", legacy_trigger)),
            outbox=Outbox.from_json(outbox) if outbox else None,
            alerting=_episodes(alerting),
        )


class DriftWindows:
    """The window state machine over ``store``; every change is written back as a key.

    ``partitions``: how many partitions the traffic has, each sending its blocks.
    ``notices``: when a closed window's alert notifies ops (refinery/monitor/notices.py;
    None: its defaults).
    """

    def __init__(
        self,
        store: MutableMapping[str, Any],
        spec: DriftSpec,
        max_key_share: float = 1.0,
        partitions: int = 1,
        notices: NoticePolicy | None = None,
    ) -> None:
        self.store = store
        self.spec = spec
        self.notices = notices or NoticePolicy()
        self.max_key_share = max_key_share  # of a trigger's new labels (task feedback section)
        self.partitions = partitions
        self._ids: tuple[tuple[Any, ...], set[str]] | None = None  # (slices, their ids)
        self._base = -1  # the committed ``step`` when the record being applied began
        self._written: set[str] = set()  # rated entries it wrote

    @property
    def state(self) -> WindowState:
        raw = self.store.get("meta")
        if raw and raw.get("schema", 1) < STATE_SCHEMA:  # until the first commit rewrites it
            raw = self._migrate(raw)
        return WindowState.from_json(raw, self.store.get("trigger"))

    @property
    def outbox(self) -> Outbox | None:
        """A closed window's messages not known to be sent (a crash cut the send short)."""
        return self.state.outbox

    def _commit(self, state: WindowState) -> None:
        self.store["meta"] = state.to_json()

    def _entry(self, key: str, state: WindowState) -> dict[str, Any] | None:
        """The rated entry at ``key`` if a committed record (or the one being applied)
        wrote it for a live window: one of a later step was written by a record that
        crashed before its commit. Layout 2 named the record's position instead."""
        entry = self.store.get(key)
        # Entries of schema 1 have no "gen": a re-rating from before an upgrade adds.
        if not entry or entry.get("gen") not in state.live:
            return None
        if key in self._written:
            return dict(entry)
        committed = entry["step"] <= self._base if "step" in entry else entry["seq"] < state.seq
        return dict(entry) if committed else None

    def apply(self, record: dict[str, Any], now: float, position: int | None = None) -> Change:
        """One record from the window topic (``now``: processing time, seconds).

        ``position``: the record's offset in the window topic; one at or before the last
        record applied is a re-read after a crash and changes nothing. None (tests): next.
        A block's rows are taken until a window is :meth:`due`; :meth:`absorb` takes the
        rest once it is closed.
        """
        self._written = set()
        try:
            return self._apply(record, now, position)
        except BaseException:
            self._ids = None  # it may hold ids of rows the crash left uncommitted
            raise

    def _apply(self, record: dict[str, Any], now: float, position: int | None) -> Change:
        state = self.state
        self._base = state.step
        if position is not None and position <= state.seq:
            return Change.REPLAYED
        state.seq = state.seq + 1 if position is None else position
        kind = record["kind"]
        if kind == "block":
            change = self._on_block(state, record, now)
        elif kind == "prediction":  # forwarded one by one by a worker of layout 2
            key = f"blk:single:{state.seq}:0"
            self.store[key] = [record]
            change = self._on_row(state, key, 0, record, now, self._live_ids(state))
        elif kind == "rating":
            change = self._on_rating(state, record)
        elif kind == "reset":
            state.reset(record["model_version"], record.get("action", "promoted"))
            change = Change.RESET
        elif kind == "rejected":
            on_rejection(state.trigger)
            change = Change.REJECTED
        elif kind == "tick":
            change = Change.NONE
        else:
            raise ValueError(f"unknown window record kind {kind!r}")
        if change not in (Change.NONE, Change.REPLAYED):
            self._ask_for_labels(state)
            self._commit(state)
        if change is Change.RESET:
            self._collect(state)
        return change

    def absorb(self, now: float) -> Change:
        """Take the rows of blocks every partition has closed, until a window is due."""
        self._written = set()
        try:
            state = self.state
            self._base = state.step
            change = self._absorb(state, now)
            self._ask_for_labels(state)
            self._commit(state)
        except BaseException:
            self._ids = None
            raise
        return change

    def _ask_for_labels(self, state: WindowState) -> None:
        """A persisted episode that waited only for labels asks once they are in, between
        windows; its trigger goes in the outbox with the state (:meth:`close` keeps one
        that was not sent yet)."""
        if state.outbox is not None or state.phase != CURRENT:
            return
        if state.cur_end is None or state.version is None:  # no prediction in the window yet
            return
        trigger = on_labels(
            self.spec,
            state.trigger,
            state.version,
            datetime.fromisoformat(state.cur_end),
            self.max_key_share,
            ThumbsCount.of(state.ref_thumbs, state.ref_keys),
        )
        if trigger is not None:
            state.outbox = Outbox(state.index, (), trigger)

    def _on_block(self, state: WindowState, record: dict[str, Any], now: float) -> Change:
        partition = str(record["partition"])
        mark = [record["round"], record["part"]]
        last = state.last.get(partition)
        if last is not None and mark <= last:
            return Change.REPLAYED  # the keeper sent it again
        state.last[partition] = mark
        state.through[partition] = max(record["through"], state.through.get(partition, -1))
        if record["predictions"]:
            self.store[_block_key(record)] = record["predictions"]
            bisect.insort(state.pending, [record["round"], record["partition"], record["part"]])
        change = self._absorb(state, now)
        return Change.WAITING if change is Change.NONE else change

    def _ready(self, state: WindowState) -> int | None:
        """The last bucket every partition has closed (None: one has sent nothing yet)."""
        marks = [state.through.get(str(p)) for p in range(self.partitions)]
        return None if None in marks else min(m for m in marks if m is not None)

    def _absorb(self, state: WindowState, now: float) -> Change:
        change, ready = Change.NONE, self._ready(state)
        ids = self._live_ids(state)  # a window closes, and they change, only between calls
        while state.pending and ready is not None and state.pending[0][0] <= ready:
            if state.pending[0][1] != MERGED:
                self._merge(state)
            key = "blk:{}:{}:{}".format(*state.pending[0])
            rows = self.store[key]
            while state.offset < len(rows):
                if self._due(state, now):
                    return change
                row = rows[state.offset]
                row_change = self._on_row(state, key, state.offset, row, now, ids)
                state.offset += 1
                if row_change is Change.REFERENCE_FULL or (
                    row_change is Change.ADDED and change is Change.NONE
                ):
                    change = row_change
            state.pending.pop(0)
            state.offset = 0
        return change

    def _merge(self, state: WindowState) -> None:
        """The first pending bucket's blocks, every partition's, as one block in time order
        (ties in partition order), in parts of ``MAX_ROWS``: a burst keeps its order across
        partitions.
        The partitions' blocks stay until the next close or reset collects them."""
        bucket = state.pending[0][0]
        blocks = [b for b in state.pending if b[0] == bucket]
        rows = [row for b in blocks for row in self.store["blk:{}:{}:{}".format(*b)]]
        rows.sort(key=lambda row: row.get("t", 0.0))
        merged = []
        for part, start in enumerate(range(0, len(rows), MAX_ROWS)):  # a record < 1 MB
            merged.append([bucket, MERGED, part])
            self.store[f"blk:{bucket}:{MERGED}:{part}"] = rows[start : start + MAX_ROWS]
        state.pending = merged + [b for b in state.pending if b[0] != bucket]
        state.offset = 0

    def _on_row(
        self,
        state: WindowState,
        key: str,
        i: int,
        row: dict[str, Any],
        now: float,
        ids: set[str],  # of the live windows: a row taken adds its own
    ) -> Change:
        if row.get("kind") == "rating":  # paired in this partition after the rows before it
            return self._on_rating(state, row)
        if state.version is None:
            state.version = row["model_version"]  # first start: adopt what is served
        if row["model_version"] != state.version:
            return Change.NONE
        prediction_id = row.get("prediction_id")
        if prediction_id in ids:
            return Change.REPLAYED  # it came again in a later block
        change = Change.ADDED
        if state.phase == REFERENCE:
            _extend(state.ref_slices, key, i)
            state.ref_n += 1
            if state.ref_n >= self.spec.reference_size:
                state.phase, change = CURRENT, Change.REFERENCE_FULL
        else:
            if state.cur_n == 0:
                state.cur_opened_at, state.cur_start = now, row["at"]
            _extend(state.cur_slices, key, i)
            state.cur_n += 1
            state.cur_end = row["at"]
        if prediction_id is not None:
            ids.add(prediction_id)
        return change

    def _live_ids(self, state: WindowState) -> set[str]:
        """The prediction ids of the reference, the open window and the last closed one,
        read from their blocks once and kept while the slices grow."""
        base = (state.epoch, state.index, tuple(map(tuple, state.prev_slices)))
        if self._ids is None or self._ids[0] != base:
            ids = {
                row["prediction_id"]
                for row in self._rows(state.ref_slices + state.cur_slices + state.prev_slices)
                if row.get("prediction_id")
            }
            self._ids = (base, ids)
        return self._ids[1]

    def _rows(self, slices: list[list[Any]]) -> list[dict[str, Any]]:
        return [row for key, start, end in slices for row in self.store[key][start:end]]

    def _on_rating(self, state: WindowState, record: dict[str, Any]) -> Change:
        key = f"rated:{record['feedback_id']}"
        previous = self._entry(key, state)
        event = record.get("event_id")
        if previous is not None and event is not None and previous["event"] == event:
            return Change.REPLAYED
        key_id = record.get("key_id", "")
        # The trigger's evidence counts rating ids, not rating events: a re-rating adds no
        # example since the promotion, and no label to the episode, that its earlier one
        # brought (a user who clicks again is not more users).
        if previous is None or previous.get("epoch") != state.epoch:
            state.trigger.examples_since_training += 1
        label = self._count_label(state, previous, key_id, bool(record.get("labeled")))
        # Reviewers' labels are not users' thumbs: not in the thumbs-down rate.
        counted = record["model_version"] == state.version and not record.get("reviewer")
        generation = state.generation
        if counted:
            reference = state.phase == REFERENCE
            thumbs = state.ref_thumbs if reference else state.cur_thumbs
            by_key = state.ref_keys if reference else state.cur_keys
            if previous and previous["gen"] == generation and previous["counted"]:
                for count in (thumbs, by_key.setdefault(previous.get("key_id", ""), [0, 0])):
                    count[0] -= int(previous["down"])  # a re-rating replaces its earlier one
                    count[1] -= 1
            for count in (thumbs, by_key.setdefault(key_id, [0, 0])):
                count[0] += int(record["down"])
                count[1] += 1
            if previous and previous.get("refining"):
                on_champion_rating(state.trigger, previous["down"], previous["key_id"], sign=-1)
            on_champion_rating(state.trigger, record["down"], key_id)
        state.step += 1
        self._written.add(key)
        self.store[key] = {
            "gen": generation,
            "step": state.step,
            "event": event,
            "down": record["down"],
            "counted": counted,
            "key_id": key_id,
            "refining": counted and state.trigger.refining,  # in the ratings since promotion
            "epoch": state.epoch,  # counted in examples_since_training for this reference
            "label": label,  # [episode, key] its label counts in, or None
        }
        return Change.RATED

    @staticmethod
    def _count_label(
        state: WindowState, previous: dict[str, Any] | None, key_id: str, labeled: bool
    ) -> list[str] | None:
        """Count a rating's label in the drift episode, once per rating id while its entry
        is kept (the reference, the open and the last closed window): a re-rating keeps the
        label its earlier one counted, or takes it back when it brings none. Returns where
        the label counts, [episode, key], for the rating's entry."""
        trigger = state.trigger
        if trigger.episode_start is None:
            return None
        episode = trigger.episode_start.isoformat()
        counted = previous.get("label") if previous else None
        labels = trigger.labels_by_key
        if counted is not None and counted[0] == episode:
            if labeled:
                return list(counted)
            trigger.labels_in_episode -= 1
            labels[counted[1]] = labels.get(counted[1], 1) - 1
            if labels[counted[1]] <= 0:
                del labels[counted[1]]
            return None
        if not labeled:
            return None
        trigger.labels_in_episode += 1
        labels[key_id] = labels.get(key_id, 0) + 1
        return [episode, key_id]

    def due(self, now: float) -> bool:
        return self._due(self.state, now)

    def _due(self, state: WindowState, now: float) -> bool:
        if state.phase != CURRENT or state.cur_n == 0:
            return False
        opened = now if state.cur_opened_at is None else state.cur_opened_at
        timed_out = now - opened >= self.spec.window_minutes * 60
        return bool(state.cur_n >= self.spec.window_size or timed_out)

    def closing(self) -> ClosedWindow:
        """The open window, for the drift tests; nothing changes until :meth:`close`."""
        state = self.state
        if state.version is None or state.cur_start is None or state.cur_end is None:
            raise ValueError(f"window {state.index} is empty: nothing to close")
        current = self._rows(state.cur_slices)
        ids = "\n".join(r.get("prediction_id") or "" for r in current)
        return ClosedWindow(
            index=state.index,
            version=state.version,
            reference=[_row(r["row"]) for r in self._rows(state.ref_slices)],
            current=[_row(r["row"]) for r in current],
            digest=hashlib.sha256(ids.encode()).hexdigest()[:12],
            reference_thumbs=ThumbsCount.of(state.ref_thumbs, state.ref_keys),
            current_thumbs=ThumbsCount.of(state.cur_thumbs, state.cur_keys),
            start=datetime.fromisoformat(state.cur_start),
            end=datetime.fromisoformat(state.cur_end),
        )

    def notice(
        self, closed: ClosedWindow, drifted_columns: list[str], metrics: list[DriftMetric]
    ) -> dict[EpisodeKind, Decision]:
        """Whether the closing window's alerts notify ops, one decision per kind of episode;
        nothing changes until :meth:`close` commits the episodes they leave."""
        state = self.state
        return decide_each(
            self.notices, state.alerting, drifted_columns, metrics, closed.start, closed.end
        )

    def close(
        self,
        closed: ClosedWindow,
        drifted_columns: list[str],
        alerts: Sequence[AlertEvent],
        decisions: Mapping[EpisodeKind, Decision] | None = None,
    ) -> Outbox:
        """Decide on a retrain and open the next window (the reference stays), in one write
        that also holds what is to be sent; :meth:`delivered` clears it once sent.
        ``decisions``: the window's :meth:`notice`, whose episodes this commits (None: the
        caller sends no alerts, the episodes stay as they were)."""
        state = self.state
        if closed.index != state.index:
            raise ValueError(f"window {closed.index} is not the open one ({state.index})")
        if decisions is not None:
            state.alerting = open_episodes(decisions)
        trigger = on_window(
            self.spec,
            state.trigger,
            closed.version,
            closed.end,
            drifted_columns,
            self.max_key_share,
            window_start=closed.start,
            reference_thumbs=closed.reference_thumbs,
            current_thumbs=closed.current_thumbs,
        ) or on_refinement_window(self.spec, state.trigger, closed.version, closed.end)
        if state.outbox is not None and state.outbox.index == state.index:
            trigger = trigger or state.outbox.trigger  # asked for by labels, not sent yet
        state.outbox = Outbox(closed.index, tuple(alerts), trigger)
        state.previous = state.generation
        state.prev_slices, state.cur_slices = state.cur_slices, []
        state.index += 1
        state.cur_n, state.cur_opened_at, state.cur_start, state.cur_end = 0, None, None, None
        state.cur_thumbs, state.cur_keys = [0, 0], {}
        self._commit(state)
        self._collect(state)
        return state.outbox

    def delivered(self, outbox: Outbox) -> None:
        """The broker has the outbox's messages: nothing to resend after a crash."""
        state = self.state
        if state.outbox is not None and state.outbox.index == outbox.index:
            state.outbox = None
            self._commit(state)

    def _collect(self, state: WindowState) -> None:
        """Delete the blocks and rated entries the committed ``state`` no longer reads. A
        crash before this ends leaves keys it ignores; the next close or reset deletes them."""
        live = state.live
        blocks = {s[0] for s in state.ref_slices + state.cur_slices + state.prev_slices}
        blocks |= {"blk:{}:{}:{}".format(*b) for b in state.pending}
        for key in list(self.store):
            kind = key.partition(":")[0]
            if (
                (kind == "blk" and key not in blocks)
                or (kind == "rated" and self.store[key].get("gen") not in live)
                or kind in ("ref", "cur", "id")  # rows and ids of layout 2 (migrated)
                or key == "trigger"  # schema 1 kept the trigger state here; meta has it now
            ):
                del self.store[key]

    def _migrate(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A table of layout 1 or 2 (a row per key): its rows become two blocks, once."""
        raw = dict(raw)
        for kind, count in (("ref", raw.get("ref_n", 0)), ("cur", raw.get("cur_n", 0))):
            key = f"blk:{kind}:layout2:0"
            if count and key not in self.store:
                self.store[key] = [
                    {"prediction_id": None, "row": self.store[f"{kind}:{i}"]} for i in range(count)
                ]
            raw[f"{kind}_slices"] = [[key, 0, count]] if count else []
        return raw


def _episodes(raw: dict[str, Any] | None) -> dict[EpisodeKind, AlertEpisode]:
    """The open episodes in ``meta``; one written before episode kinds was of the kind its
    columns were (quality if any was)."""
    if not raw:
        return {}
    if "began" in raw:
        episode = AlertEpisode.from_json(raw)
        kinds = {episode_kind(column) for column in episode.columns}
        return {"quality" if "quality" in kinds else "operational": episode}
    return {kind: AlertEpisode.from_json(raw[kind]) for kind in EPISODE_KINDS if kind in raw}


def _block_key(record: dict[str, Any]) -> str:
    return f"blk:{record['round']}:{record['partition']}:{record['part']}"


def _extend(slices: list[list[Any]], key: str, i: int) -> None:
    """Row ``i`` of block ``key`` joins ``slices`` (one slice per run of rows)."""
    if slices and slices[-1][0] == key and slices[-1][2] == i:
        slices[-1][2] = i + 1
    else:
        slices.append([key, i, i + 1])
