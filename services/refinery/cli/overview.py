"""What ``refinery status`` says of the loop, besides its processes: the champion and the
previous version with their golden-set scores, the last drift window, the newest alert of
each kind of episode, the last retraining run and its outcome, the last decision told to
ops.

Each line asks one part (the registry, Kafka, MLflow, the Evidently UI); a part that
does not answer gives its line as unavailable, never the whole status.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from refinery.common.decisions import lines as decision_lines
from refinery.common.decisions import run_url
from refinery.common.events import EPISODE_KINDS, AlertEvent, DecisionEvent
from refinery.common.kafka import newest_events
from refinery.common.registry import GOLDEN_SCORE_TAG, PREVIOUS, ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.common.topics import Stream


def overview(settings: Settings) -> list[str]:
    parts: list[tuple[str, Callable[[Settings], str]]] = [
        ("models", _models),
        ("last drift window", _last_window),
        ("alerts", _alerts),
        ("last retraining", _last_retraining),
        ("last decision", _last_decision),
    ]
    out = []
    for name, part in parts:
        try:
            out.append(f"{name}: {part(settings)}")
        except Exception as exc:  # one part down: say so, and go on with the others
            out.append(f"{name}: unavailable ({type(exc).__name__}: {str(exc)[:120]})")
    return out


def _golden(info: VersionInfo) -> str:
    score = info.tags.get(GOLDEN_SCORE_TAG)
    return f"golden {float(score):.3f}" if score else "golden -"


def _models(settings: Settings) -> str:
    registry = ModelRegistry(settings)
    champion = registry.champion() if registry.exists() else None
    if champion is None:
        return "no champion yet (`refinery bootstrap`)"
    previous = registry.by_alias(PREVIOUS)
    said = f"champion v{champion.version} ({champion.kind}, {_golden(champion)})"
    return said + (f"; previous v{previous.version} ({_golden(previous)})" if previous else "")


def _last_window(settings: Settings) -> str:
    """From the Evidently UI, which lists the monitor's windows newest first."""
    ui = settings.evidently_ui_url
    projects = httpx.get(f"{ui}/api/projects", timeout=5).raise_for_status().json()
    if not projects:
        return "none yet"
    project = projects[0]["id"]
    windows = httpx.get(f"{ui}/api/projects/{project}/snapshots", timeout=10).json()
    if not windows:
        return "none yet"
    newest = max(windows, key=lambda w: w["timestamp"])
    meta, tags = newest["metadata"], newest["tags"]
    state = "drifted" if "drifted" in tags else "stable"
    drifted = f" in {meta['drifted_columns']}" if state == "drifted" else ""
    return (
        f"window {meta.get('window_index', '?')} of v{meta.get('model_version', '?')}, "
        f"ended {meta.get('window_end', newest['timestamp'])[:19]}, {state}{drifted} "
        f"({ui}/projects/{project})"
    )


#: Alert records read back per partition to find each kind's newest: an open episode sends
#: a reminder every REFINERY_ALERT_REPEAT_MINUTES, so this reaches back far enough.
ALERTS_READ = 100


def _alerts(settings: Settings) -> str:
    """Each kind of episode's newest alert: the newest alert of all may be an operational
    one while a quality episode is still open."""
    newest: dict[str, AlertEvent] = {}
    for alert in newest_events(settings, Stream.ALERTS, last=ALERTS_READ):
        if isinstance(alert, AlertEvent):
            newest.setdefault(alert.episode_kind, alert)
    if not newest:
        return "none"
    return "; ".join(_alert(newest[kind]) for kind in EPISODE_KINDS if kind in newest)


def _alert(alert: AlertEvent) -> str:
    if alert.resolved:
        return (
            f"{alert.episode_kind} resolved {_ago(alert.occurred_at)} "
            f"(reference v{alert.reference_version})"
        )
    return (
        f"{alert.episode_kind} {alert.severity} {_ago(alert.occurred_at)}, drift in "
        f"{', '.join(alert.drifted_columns)} (reference v{alert.reference_version})"
        + (f" {alert.report_url}" if alert.report_url else "")
    )


def _last_decision(settings: Settings) -> str:
    told = next(iter(newest_events(settings, Stream.DECISIONS)), None)
    if not isinstance(told, DecisionEvent):
        return "none"
    return f"{_ago(told.occurred_at)} {decision_lines(told)[0]}"


def _last_retraining(settings: Settings) -> str:
    from mlflow import MlflowClient

    from refinery.retrainer.record import OUTCOME_TAG, TRIGGER_TAG, VERSION_TAG

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        return "none"
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`refinery.step` = 'retrain'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return "none"
    run = runs[0]
    tags = run.data.tags
    outcome = tags.get(OUTCOME_TAG, "running")
    version = f" v{tags[VERSION_TAG]}" if VERSION_TAG in tags else ""
    started = datetime.fromtimestamp(run.info.start_time / 1000, UTC)
    link = run_url(settings.mlflow_uri, run.info.experiment_id, run.info.run_id)
    return f"{tags.get(TRIGGER_TAG, '?')}: {outcome}{version}, started {_ago(started)} ({link})"


def _ago(when: datetime) -> str:
    seconds = (datetime.now(UTC) - when).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{when:%Y-%m-%d %H:%M} UTC"
