"""What a retraining run records in MLflow, named in this module only.

The pipeline writes its tags, timings and evaluation figures under these names; readers
(the demo's timeline, benches, tests) get a :class:`RunRecord` with typed fields back, so
no metric or tag name travels between modules as a string.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any

from refinery.common.decisions import run_url

TRIGGER_TAG = "refinery.trigger_id"
TRIGGER_KEY_TAG = "refinery.trigger_key"  # a hash of the id: safe in a filter string
TRIGGER_REASON_TAG = "refinery.reason"  # why the trigger asked
OUTCOME_TAG = "refinery.outcome"  # set once a run has finished: promoted, rejected, ...
OFFSETS_TAG = "refinery.snapshot_offsets"
VERSION_TAG = "refinery.version"
REASONS_TAG = "refinery.reasons"  # why the run decided as it did
ERROR_TAG = "refinery.error"
CHAMPION_PARAM = "champion_version"  # the champion the run gates against (kept on resume)


def trigger_key(trigger_id: str) -> str:
    return hashlib.sha256(trigger_id.encode()).hexdigest()[:32]


def evaluation_metric(dataset: str, who: str, key: str) -> str:
    """The name of one evaluation figure: ``golden_champion_accuracy``, ..."""
    return f"{dataset}_{who}_{key}"


@dataclass(frozen=True)
class Timings:
    """Seconds each step of a run took (None: the run did not get there)."""

    data_seconds: float | None = None
    training_seconds: float | None = None
    evaluation_seconds: float | None = None
    switch_seconds: float | None = None

    def as_metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> Timings:
        return cls(**{f.name: metrics.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class RunRecord:
    """One retraining run as MLflow holds it."""

    run_id: str
    url: str
    started_at: float  # epoch seconds
    trigger_id: str
    reason: str
    outcome: str | None  # None while it runs (or a canary watch waits to resume)
    version: str | None
    timings: Timings
    # The gate metric's mean per-item score (0-1) on the golden set, both models.
    golden_champion: float | None
    golden_challenger: float | None

    @classmethod
    def of(cls, run: Any, tracking_uri: str, gate_key: str) -> RunRecord:
        """``run``: an ``mlflow.entities.Run``; ``gate_key``: where :func:`metrics` keeps
        the gate metric (``gate.main_metric_key``)."""
        tags, values = run.data.tags, run.data.metrics
        info = run.info
        return cls(
            run_id=info.run_id,
            url=run_url(tracking_uri, info.experiment_id, info.run_id),
            started_at=info.start_time / 1000,
            trigger_id=tags.get(TRIGGER_TAG, ""),
            reason=tags.get(TRIGGER_REASON_TAG, ""),
            outcome=tags.get(OUTCOME_TAG),
            version=tags.get(VERSION_TAG),
            timings=Timings.from_metrics(values),
            golden_champion=values.get(evaluation_metric("golden", "champion", gate_key)),
            golden_challenger=values.get(evaluation_metric("golden", "challenger", gate_key)),
        )


def find_run(client: Any, experiment_ids: list[str], trigger_id: str) -> Any | None:
    """The run of ``trigger_id`` (an ``mlflow.entities.Run``), or None. Looked up by a
    hash: a trigger id may hold quotes the filter language would misread."""
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.`{TRIGGER_KEY_TAG}` = '{trigger_key(trigger_id)}'",
        max_results=5,
    )
    return runs[0] if runs else None
