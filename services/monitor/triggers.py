"""When drift becomes a retrain request: persistent, with enough new labels, not too often.

The trigger id names the drift episode (reference version + the first drifted window of
the run), so a replay or a second worker asking again yields the same id, and the
retrainer trains once per id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.common.events import TriggerEvent
from services.common.shares import capped_total
from services.common.task import DriftSpec

#: Columns that say how the service runs, not what it sees: a slow host (say, training on
#: the same cores) drifts latency, and retraining would not fix that. Alerted, never triggered.
OPERATIONAL_COLUMNS = frozenset({"latency_ms"})
_TRIGGER_NS = uuid.UUID("8c2e5a91-4f3b-4d7e-a6c0-5b1f9e2d7a34")


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
        )


def on_window(
    spec: DriftSpec,
    state: TriggerState,
    reference_version: str,
    window_end: datetime,
    drifted_columns: list[str],
    max_key_share: float = 1.0,
) -> TriggerEvent | None:
    """Update ``state`` with one closed window; return a trigger when one is due.

    Only quality columns count: drift in :data:`OPERATIONAL_COLUMNS` alone is no episode.
    New labels count with no API key over ``max_key_share`` of them (a flood of one key's
    corrections is not the evidence of many users).
    """
    drifted_columns = [c for c in drifted_columns if c not in OPERATIONAL_COLUMNS]
    if not drifted_columns:
        state.consecutive, state.episode_start, state.drifted_columns = 0, None, []
        state.labels_in_episode, state.labels_by_key = 0, {}
        return None
    state.consecutive += 1
    state.episode_start = state.episode_start or window_end
    state.drifted_columns = sorted(set(state.drifted_columns) | set(drifted_columns))
    if state.consecutive < spec.persist_windows:
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
    cooldown = timedelta(minutes=spec.cooldown_minutes)
    if state.last_trigger_at is not None and window_end - state.last_trigger_at < cooldown:
        return None
    state.last_trigger_at = window_end
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
    return TriggerEvent(
        # One event per decision: deciding on the same window again after a crash gives
        # the same event id (a later window of the episode asks again, under a new one).
        event_id=str(uuid.uuid5(_TRIGGER_NS, f"{trigger_id}@{window_end.isoformat()}")),
        trigger_id=trigger_id,
        reason=f"drift in {', '.join(state.drifted_columns)} for {state.consecutive} windows",
        requested_by="monitor",
        window_start=state.episode_start,
        window_end=window_end,
        evidence=evidence,
    )


def on_promotion(state: TriggerState) -> None:
    """A new champion: its own reference, no drift yet, no labels since its training."""
    state.consecutive, state.episode_start, state.drifted_columns = 0, None, []
    state.examples_since_training = state.labels_in_episode = 0
    state.labels_by_key = {}
