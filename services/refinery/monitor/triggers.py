"""When drift becomes a retrain request: persistent, with enough new labels, not too often;
and when a promoted challenger still lags, a refinement round.

The trigger id names the drift episode (reference version + the first drifted window of
the run), so a replay or a second worker asking again yields the same id, and the
retrainer trains once per id.

Refinement: a drift trigger keeps the champion's thumbs-down count before the drift (its
reference and every window that did not drift) as the quality bar. When that trigger's
challenger is promoted, its ratings are counted from the promotion on; once
``min_new_labels`` of them are in, each closed window tests (one-sided, the windows'
thumbs-down test) whether its thumbs-down rate is still above the bar. If so, another
round trains on everything rated since the drift began (``refine-v<N>-...``), at most
``refinement_rounds`` per episode. The cooldown spaces episodes, not the rounds of one:
each round waits for its own evidence instead. A model that shows no lag by
``REFINE_GIVE_UP`` x ``min_new_labels`` ratings has caught up.

Retries: a challenger rejected while the drift goes on (too little evidence for the gate,
often) leaves its users on a lagging champion. Rather than wait out the cooldown, the
episode asks again once its labels have doubled since the rejected trigger
(``drift-v<N>-<start>-retry<k>``), at most ``retries_after_rejection`` times.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from refinery.common.events import TriggerEvent, columns_of
from refinery.common.shares import capped_total
from refinery.common.task import DriftSpec
from refinery.monitor.drift import ThumbsCount, thumbs_down_p_value

_TRIGGER_NS = uuid.UUID("8c2e5a91-4f3b-4d7e-a6c0-5b1f9e2d7a34")
REFINE_GIVE_UP = 4  # x min_new_labels ratings since a promotion without a significant lag


@dataclass
class TriggerState:
    """What the policy remembers between windows (kept in a faust table by the worker)."""

    consecutive: int = 0
    episode_start: datetime | None = None
    examples_since_training: int = 0
    labels_in_episode: int = 0  # thumbs-up or corrections since the episode's first window
    labels_by_key: dict[str, int] = field(default_factory=dict)  # the same per API key
    last_trigger_at: datetime | None = None
    drifted_columns: list[str] = field(default_factory=list)
    drift_began: datetime | None = None  # the first drifted window's start (one episode)
    # Refinement (module docstring): the bar before the drift, [down, total] and per key;
    # rounds still allowed; the champion's ratings since its promotion while refining.
    stable: list[int] = field(default_factory=lambda: [0, 0])  # windows without drift
    stable_keys: dict[str, list[int]] = field(default_factory=dict)
    bar: list[int] | None = None
    bar_drift_began: datetime | None = None  # the episode's drift_began: rounds learn from it
    bar_keys: dict[str, list[int]] = field(default_factory=dict)
    rounds_left: int = 0
    refining: bool = False
    since: list[int] = field(default_factory=lambda: [0, 0])
    since_keys: dict[str, list[int]] = field(default_factory=dict)
    # Retries (module docstring): labels counted at the episode's last trigger; the count
    # at which a rejected episode asks again (None: no retry due); retries still allowed.
    labels_at_trigger: int = 0
    retry_at: int | None = None
    retries_left: int = 0

    def to_json(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "consecutive": self.consecutive,
            "episode_start": iso(self.episode_start),
            "examples_since_training": self.examples_since_training,
            "labels_in_episode": self.labels_in_episode,
            "labels_by_key": dict(self.labels_by_key),
            "last_trigger_at": iso(self.last_trigger_at),
            "drifted_columns": self.drifted_columns,
            "drift_began": iso(self.drift_began),
            "stable": list(self.stable),
            "stable_keys": {k: list(v) for k, v in self.stable_keys.items()},
            "bar": list(self.bar) if self.bar else None,
            "bar_drift_began": iso(self.bar_drift_began),
            "bar_keys": {k: list(v) for k, v in self.bar_keys.items()},
            "rounds_left": self.rounds_left,
            "refining": self.refining,
            "since": list(self.since),
            "since_keys": {k: list(v) for k, v in self.since_keys.items()},
            "labels_at_trigger": self.labels_at_trigger,
            "retry_at": self.retry_at,
            "retries_left": self.retries_left,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> TriggerState:
        if not raw:
            return cls()

        def when(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return cls(
            consecutive=raw["consecutive"],
            episode_start=when(raw["episode_start"]),
            examples_since_training=raw["examples_since_training"],
            labels_in_episode=raw.get("labels_in_episode", 0),
            labels_by_key=dict(raw.get("labels_by_key", {})),
            last_trigger_at=when(raw["last_trigger_at"]),
            drifted_columns=list(raw["drifted_columns"]),
            drift_began=when(raw.get("drift_began")),
            stable=list(raw.get("stable", [0, 0])),
            stable_keys={k: list(v) for k, v in raw.get("stable_keys", {}).items()},
            bar=list(raw["bar"]) if raw.get("bar") else None,
            bar_drift_began=when(raw.get("bar_drift_began")),
            bar_keys={k: list(v) for k, v in raw.get("bar_keys", {}).items()},
            rounds_left=raw.get("rounds_left", 0),
            refining=raw.get("refining", False),
            since=list(raw.get("since", [0, 0])),
            since_keys={k: list(v) for k, v in raw.get("since_keys", {}).items()},
            labels_at_trigger=raw.get("labels_at_trigger", 0),
            retry_at=raw.get("retry_at"),
            retries_left=raw.get("retries_left", 0),
        )


def on_window(
    spec: DriftSpec,
    state: TriggerState,
    reference_version: str,
    window_end: datetime,
    drifted_columns: list[str],
    max_key_share: float = 1.0,
    window_start: datetime | None = None,
    reference_thumbs: ThumbsCount | None = None,
    current_thumbs: ThumbsCount | None = None,
) -> TriggerEvent | None:
    """Update ``state`` with one closed window; return a trigger when one is due.

    Only quality columns count: operational drift (latency) alone is no episode.
    New labels count with no API key over ``max_key_share`` of them (a flood of one key's
    corrections is not the evidence of many users). The champion's ratings in its
    reference (``reference_thumbs``) and in windows without drift (``current_thumbs``) are
    the bar a refinement round is judged against.
    """
    drifted_columns = columns_of("quality", drifted_columns)
    if not drifted_columns:
        state.consecutive, state.episode_start, state.drifted_columns = 0, None, []
        state.labels_in_episode, state.labels_by_key = 0, {}
        state.drift_began = None
        _end_retries(state)
        if current_thumbs is not None:
            _add(state.stable, state.stable_keys, current_thumbs)
        return None
    state.consecutive += 1
    state.episode_start = state.episode_start or window_end
    state.drift_began = state.drift_began or window_start or window_end
    state.drifted_columns = sorted(set(state.drifted_columns) | set(drifted_columns))
    return on_labels(spec, state, reference_version, window_end, max_key_share, reference_thumbs)


def on_labels(
    spec: DriftSpec,
    state: TriggerState,
    reference_version: str,
    at: datetime,
    max_key_share: float = 1.0,
    reference_thumbs: ThumbsCount | None = None,
) -> TriggerEvent | None:
    """A persisted episode's trigger, once it has the examples and labels and is out of
    its cooldown (or its retry is due): decided at each window's close (:func:`on_window`)
    and between windows (``at``: the newest prediction's time), so an episode that waited
    only for labels (or for a retry's doubled labels) asks as soon as they are in, not at
    the next close, which at low traffic can be minutes away (``window_minutes``)."""
    if state.episode_start is None or state.consecutive < spec.persist_windows:
        return None
    if state.examples_since_training < spec.min_examples:
        return None
    labels = (
        capped_total(state.labels_by_key, max_key_share)
        if state.labels_by_key
        else state.labels_in_episode
    )
    if labels < spec.min_new_labels:
        return None
    retry = state.retry_at is not None and labels >= state.retry_at
    cooldown = timedelta(minutes=spec.cooldown_minutes)
    if not retry and state.last_trigger_at is not None and at - state.last_trigger_at < cooldown:
        return None
    state.last_trigger_at = at
    if retry:
        state.retries_left -= 1
    elif state.labels_at_trigger == 0:  # the episode's first trigger
        state.retries_left = spec.retries_after_rejection
    state.labels_at_trigger, state.retry_at = labels, None
    if state.bar is None and reference_thumbs is not None:  # kept through the episode's rounds
        state.bar, state.bar_keys = (
            list(state.stable),
            {k: list(v) for k, v in state.stable_keys.items()},
        )
        _add(state.bar, state.bar_keys, reference_thumbs)
        state.bar_drift_began = state.drift_began
    state.rounds_left = spec.refinement_rounds
    evidence: dict[str, Any] = {
        "reference_version": reference_version,
        "drifted_columns": state.drifted_columns,
        "drifted_windows": state.consecutive,
        "examples_since_training": state.examples_since_training,
        "labels_in_episode": state.labels_in_episode,
        "labels_counted": labels,  # with no key over its share
        "keys_labeling": len(state.labels_by_key),
    }
    trigger_id = f"drift-v{reference_version}-{state.episode_start:%Y%m%dT%H%M%S}"
    if retry:
        attempt = spec.retries_after_rejection - state.retries_left
        trigger_id += f"-retry{attempt}"
        evidence["retry"] = attempt
    return TriggerEvent(
        # One event per decision: deciding on the same window again after a crash gives
        # the same event id (a later window of the episode asks again, under a new one).
        event_id=str(uuid.uuid5(_TRIGGER_NS, f"{trigger_id}@{at.isoformat()}")),
        trigger_id=trigger_id,
        reason=f"drift in {', '.join(state.drifted_columns)} for {state.consecutive} windows",
        requested_by="monitor",
        window_start=state.drift_began,
        window_end=at,
        evidence=evidence,
    )


def _add(counts: list[int], by_key: dict[str, list[int]], thumbs: ThumbsCount) -> None:
    counts[0] += thumbs.down
    counts[1] += thumbs.total
    for key, down, total in thumbs.by_key:
        mine = by_key.setdefault(key, [0, 0])
        mine[0] += down
        mine[1] += total


def on_champion_rating(state: TriggerState, down: bool, key_id: str, sign: int = 1) -> None:
    """A user's rating of the champion's answer (``sign`` -1: one replaced by a re-rating)."""
    if not state.refining:
        return
    for count in (state.since, state.since_keys.setdefault(key_id, [0, 0])):
        count[0] += sign * int(down)
        count[1] += sign


def on_refinement_window(
    spec: DriftSpec, state: TriggerState, champion_version: str, window_end: datetime
) -> TriggerEvent | None:
    """At a closed window: a refinement round when the promoted challenger still lags."""
    if not state.refining or state.bar is None or state.since[1] < spec.min_new_labels:
        return None
    bar = ThumbsCount.of(state.bar, state.bar_keys)
    since = ThumbsCount.of(state.since, state.since_keys)
    p = thumbs_down_p_value(bar, since)
    if p >= spec.thumbs_down_p_value:
        if since.total >= REFINE_GIVE_UP * spec.min_new_labels:
            _end_refinement(state)  # caught up, as far as its users can tell
        return None
    state.refining = False
    state.rounds_left -= 1
    round_ = spec.refinement_rounds - state.rounds_left
    began = state.bar_drift_began or window_end
    trigger_id = f"refine-v{champion_version}-{began:%Y%m%dT%H%M%S}"
    return TriggerEvent(
        event_id=str(uuid.uuid5(_TRIGGER_NS, f"{trigger_id}@{window_end.isoformat()}")),
        trigger_id=trigger_id,
        reason=(
            f"refinement round {round_}: v{champion_version} has {since.rate:.1%} thumbs-down "
            f"over {since.total} ratings since its promotion, {bar.rate:.1%} over "
            f"{bar.total} before the drift (p={p:.1e})"
        ),
        requested_by="monitor",
        window_start=began,  # the round learns from everything rated since the drift began
        window_end=window_end,
        evidence={
            "refinement_round": round_,
            "champion_version": champion_version,
            "thumbs_down_since_promotion": list(state.since),
            "thumbs_down_before_drift": list(state.bar),
            "p_value": p,
        },
    )


def on_rejection(state: TriggerState) -> None:
    """A challenger was rejected: if the drift episode that asked for it goes on, it may
    ask again once its labels have doubled (module docstring)."""
    if state.episode_start is None or state.labels_at_trigger == 0 or state.retries_left <= 0:
        return  # no drift trigger of a live episode to retry
    state.retry_at = 2 * state.labels_at_trigger


def _end_retries(state: TriggerState) -> None:
    state.labels_at_trigger, state.retry_at, state.retries_left = 0, None, 0


def _end_refinement(state: TriggerState) -> None:
    state.bar, state.bar_keys, state.rounds_left, state.refining = None, {}, 0, False
    state.bar_drift_began = None
    state.since, state.since_keys = [0, 0], {}


def on_promotion(state: TriggerState, action: str = "promoted") -> None:
    """A new champion: its own reference, no drift yet, no labels since its training. A
    promotion with refinement rounds left starts counting its ratings against the bar; a
    rollback (ops or a canary judged it) ends the episode's refinement."""
    state.consecutive, state.episode_start, state.drifted_columns = 0, None, []
    state.examples_since_training = state.labels_in_episode = 0
    state.labels_by_key, state.drift_began = {}, None
    state.stable, state.stable_keys = [0, 0], {}
    _end_retries(state)
    if action == "promoted" and state.bar is not None and state.rounds_left > 0:
        state.refining, state.since, state.since_keys = True, [0, 0], {}
    else:
        _end_refinement(state)
