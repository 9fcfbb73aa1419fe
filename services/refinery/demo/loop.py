"""``refinery demo``: the closed loop, shown. Start the stack, play traffic through a shift
to the new product line, and stop once a retrained version answers; then print the
timeline (onset → alert → trigger → data → training → evaluation → promotion → served)
and plot quality and thumbs-down rate over time (PNG and HTML). Quality is the task's
metric as the simulator measures it: accuracy for a label, chrF (0-100) for free text.

Every time is read from what the services recorded: alerts, triggers and model events on
Kafka, the retraining run's timings in MLflow, and the simulator's own requests.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from refinery.common.events import AlertEvent, Event, ModelEvent, TriggerEvent
from refinery.common.kafka import EventConsumer
from refinery.common.settings import Settings
from refinery.common.topics import Stream
from refinery.demo.simulate import (
    ACCURACY,
    Request,
    Simulation,
    SimulationConfig,
    TaskMetric,
    simulate,
    until_promoted_then,
)
from refinery.retrainer.record import RunRecord

log = logging.getLogger(__name__)


def read_stream(settings: Settings, stream: Stream) -> list[Event]:
    import uuid

    events: list[Event] = []
    with EventConsumer(settings, [stream], group_id=f"demo-{uuid.uuid4()}") as consumer:
        idle = 0
        while idle < 3:
            batch = consumer.poll(timeout_ms=700)
            idle = 0 if batch else idle + 1
            events += [item.event for item in batch]
    return events


def _epoch(t: datetime) -> float:
    return t.timestamp()


class Retraining:
    """Whether a retraining is under way: a trigger newer than the last decision (promoted,
    rejected or rolled back), or a promoted version that has not answered yet. Called as
    the simulation's ``busy``, so the demo plays on through a refinement round the monitor
    asks for after the first promotion. A thread follows the topics (a consumer group needs
    polls that wait to join); ``close`` ends it."""

    def __init__(self, settings: Settings) -> None:
        import threading
        import uuid

        self.settings = settings
        self.group = f"demo-{uuid.uuid4()}"
        self.last_trigger = self.last_decision = 0.0
        self.promoted: str | None = None  # the served name of the newest promotion
        self.asked: set[str] = set()  # trigger ids: one asked again is no new retraining
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="demo-retraining", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        streams = [Stream.TRIGGERS, Stream.MODELS]
        with EventConsumer(self.settings, streams, group_id=self.group) as consumer:
            while not self.stopped.is_set():
                for item in consumer.poll(timeout_ms=500):
                    self._see(item.event)

    def _see(self, event: Event) -> None:
        at = _epoch(event.occurred_at)
        if isinstance(event, TriggerEvent) and event.trigger_id not in self.asked:
            self.asked.add(event.trigger_id)
            self.last_trigger = max(self.last_trigger, at)
        elif isinstance(event, ModelEvent) and event.action in (
            "promoted",
            "rejected",
            "rolled_back",
        ):
            if at >= self.last_decision and event.action == "promoted":
                self.promoted = event.served_name
            self.last_decision = max(self.last_decision, at)

    def __call__(self, answered: set[str]) -> bool:
        waiting = self.promoted is not None and self.promoted not in answered
        return self.last_trigger > self.last_decision or waiting

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


NEW_DOMAIN, OLD_DOMAIN = "smart_home", "retail"


TRIGGER_ROWS = {
    "drift": "retrain trigger",
    "retry": "retrain trigger (retry after a rejection)",
    "refinement": "refinement trigger",
    "manual": "manual retrain trigger",
}


@dataclass(frozen=True)
class Round:
    """One retraining after the onset: its trigger, its run, what came of it (seconds
    after the onset; None: did not happen)."""

    trigger: float
    trigger_id: str
    kind: str  # TriggerEvent.kind: drift, retry, refinement (or manual)
    run: RunRecord | None
    run_start: float | None
    decided: float | None  # the promoted or rejected model event
    first_served: float | None  # the first answer from its version
    new_domain_ratings: int  # acknowledged before its snapshot (all it could learn from)

    @property
    def outcome(self) -> str | None:
        return self.run.outcome if self.run else None

    @property
    def version(self) -> str | None:
        return self.run.version if self.run else None


@dataclass(frozen=True)
class Timeline:
    onset_at: float  # epoch seconds
    alert: float | None  # seconds after the onset
    rounds: list[Round]

    @property
    def first_promoted(self) -> Round | None:
        return next((r for r in self.rounds if r.outcome == "promoted"), None)

    def rows(self) -> list[tuple[str, float | None]]:
        rows: list[tuple[str, float | None]] = [
            ("drift onset (new product line)", 0.0),
            ("first drift alert", self.alert),
        ]
        if not self.rounds:
            return [*rows, ("retrain trigger", None)]
        for i, r in enumerate(self.rounds, start=1):
            name = f"v{r.version}" if r.version else "the challenger"
            tag = f"round {i}: " if len(self.rounds) > 1 else ""  # names stay unique
            rows += [
                (tag + TRIGGER_ROWS[r.kind], r.trigger),
                (tag + "retraining run started", r.run_start),
                (f"{tag}{name} {r.outcome or 'decided'} (model event)", r.decided),
            ]
            if r.outcome != "rejected":
                rows.append((f"{tag}first answer from {name}", r.first_served))
        return rows

    def split(self) -> dict[str, float | None]:
        """Onset to served, in the issue's parts: detection (onset to trigger), data (trigger
        to training: pick-up, collection, cleaning), training, evaluation, and switch (gate,
        registration, promotion event, the gateway loading the adapter, first answer)."""
        first = self.first_promoted
        if first is None or first.run is None or None in (first.run_start, first.first_served):
            return {}
        assert first.run_start is not None and first.first_served is not None
        timings = first.run.timings
        data = (first.run_start - first.trigger) + (timings.data_seconds or 0.0)
        training, evaluation = timings.training_seconds or 0.0, timings.evaluation_seconds or 0.0
        return {
            "detection": first.trigger,
            "data": data,
            "training": training,
            "evaluation": evaluation,
            "switch": first.first_served - first.trigger - data - training - evaluation,
            "total": first.first_served,
        }


def build_timeline(settings: Settings, sim: Simulation) -> Timeline:
    """The rounds as the services recorded them: triggers after the onset, each one's
    MLflow run, the model event of its decision, the first answer from its version."""
    from mlflow import MlflowClient

    from refinery.common.task import load_task
    from refinery.retrainer.gate import main_metric_key
    from refinery.retrainer.record import find_run

    onset = sim.onset_at
    after = [
        e
        for e in read_stream(settings, Stream.ALERTS)
        # The data's drift: latency drifts too when training shares the host's cores.
        if isinstance(e, AlertEvent) and not e.resolved and e.episode_kind == "quality"
    ]
    alerts = sorted(_epoch(e.occurred_at) for e in after if _epoch(e.occurred_at) >= onset)
    triggers: dict[str, TriggerEvent] = {}  # the first ask of each trigger id
    for t in sorted(
        (e for e in read_stream(settings, Stream.TRIGGERS) if isinstance(e, TriggerEvent)),
        key=lambda e: e.occurred_at,
    ):
        if _epoch(t.occurred_at) >= onset:
            triggers.setdefault(t.trigger_id, t)
    models = [e for e in read_stream(settings, Stream.MODELS) if isinstance(e, ModelEvent)]
    client = MlflowClient(settings.mlflow_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    gate_key = main_metric_key(load_task(settings.task_file))

    def rel(t: float | None) -> float | None:
        return None if t is None else t - onset

    rounds = []
    for trigger in triggers.values():
        found = (
            find_run(client, [experiment.experiment_id], trigger.trigger_id) if experiment else None
        )
        run = RunRecord.of(found, settings.mlflow_uri, gate_key) if found else None
        decided = next(
            (
                m
                for m in sorted(models, key=lambda m: m.occurred_at)
                if run
                and m.version == run.version
                and m.action in ("promoted", "rejected", "rolled_back")
            ),
            None,
        )
        answers = (
            [r for r in sim.requests if r.status == "ok" and r.version == decided.served_name]
            if decided is not None and decided.action == "promoted"
            else []
        )
        # When an answer came: a request sent before the switch may finish after it.
        served = min((r.t + (r.latency or 0.0) for r in answers), default=None)
        snapshot_at = run.started_at if run else float("inf")
        rounds.append(
            Round(
                trigger=_epoch(trigger.occurred_at) - onset,
                trigger_id=trigger.trigger_id,
                kind=trigger.kind,
                run=run,
                run_start=rel(run.started_at) if run else None,
                decided=rel(_epoch(decided.occurred_at)) if decided else None,
                first_served=rel(sim.started_at + served) if served is not None else None,
                new_domain_ratings=sum(
                    r.domain == NEW_DOMAIN
                    and r.feedback_t is not None
                    and sim.started_at + r.feedback_t < snapshot_at
                    for r in sim.requests
                ),
            )
        )
    return Timeline(onset_at=onset, alert=rel(alerts[0]) if alerts else None, rounds=rounds)


def phase_accuracy(sim: Simulation, timeline: Timeline) -> dict[str, dict[str, float | None]]:
    """The task metric (accuracy, or chrF for free text) by phase and domain, measured from
    the simulator's ground truth: before the drift, after it, and after each promoted
    version's first answer (answered by that version)."""
    onset = sim.config.shift_at_s
    # (version, when it first answered, seconds since the simulation started)
    served = [
        (r.version, onset + r.first_served)
        for r in timeline.rounds
        if r.outcome == "promoted" and r.first_served is not None
    ]
    ends = [start for _, start in served[1:]] + [float("inf")] * bool(served)
    first = served[0][1] if served else float("inf")
    phases: dict[str, list[Request]] = {
        "before drift": [r for r in sim.requests if r.t < onset],
        "after drift": [r for r in sim.requests if onset <= r.t < first],
    }
    for (version, start), end in zip(served, ends, strict=True):
        phases[f"after v{version}"] = [
            r for r in sim.requests if start <= r.t < end and r.version.endswith(f"-v{version}")
        ]
    return {
        phase: {
            domain: sim.metric.of([r for r in requests if r.domain == domain])
            for domain in (OLD_DOMAIN, NEW_DOMAIN)
        }
        for phase, requests in phases.items()
    }


def recovery(quality: dict[str, dict[str, float | None]], phase: str) -> float | None:
    """The new domain's quality in ``phase`` (after a promotion) as a share of the old
    domain's before the drift: the issue's recovery figure."""
    if phase not in quality:
        return None
    new, before = quality[phase][NEW_DOMAIN], quality["before drift"][OLD_DOMAIN]
    return None if new is None or not before else new / before


def _bins(sim: Simulation, width: float) -> list[dict[str, Any]]:
    """Per time bin: the task metric overall and per domain, and the thumbs-down rate on the
    metric's scale (a share for accuracy, a percentage for chrF), so one axis holds both."""
    metric = sim.metric
    end = max((r.t for r in sim.requests), default=0.0)
    out = []
    t = 0.0
    while t <= end:
        inside = [r for r in sim.requests if t <= r.t < t + width and r.status == "ok"]
        rated = [r for r in inside if r.rating]
        out.append(
            {
                "t": t + width / 2,
                "all": metric.of(inside),
                "smart_home": metric.of([r for r in inside if r.domain == "smart_home"]),
                "retail": metric.of([r for r in inside if r.domain == "retail"]),
                "thumbs_down": (
                    sum(r.rating == "down" for r in rated) / len(rated) * metric.top
                    if rated
                    else None
                ),
            }
        )
        t += width
    return out


def plot(sim: Simulation, timeline: Timeline, out_dir: Path, width: float = 10.0) -> list[Path]:
    """The task metric and thumbs-down rate over time, markers for alert, trigger and promotion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    out_dir.mkdir(parents=True, exist_ok=True)
    bins = _bins(sim, width)
    metric = sim.metric
    onset = sim.config.shift_at_s
    markers = [
        (name, onset + t)
        for name, t in timeline.rows()
        if t is not None and not name.endswith("retraining run started")
    ]
    series = [
        (f"{metric.name} (all)", "all"),
        (f"{metric.name}, smart_home", "smart_home"),
        (f"{metric.name}, retail", "retail"),
        ("thumbs-down rate (%)" if metric.graded else "thumbs-down rate", "thumbs_down"),
    ]
    fig, ax = plt.subplots(figsize=(11, 5))
    for label, key in series:
        points = [(b["t"], b[key]) for b in bins if b[key] is not None]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            label=label,
            linestyle="--" if key == "thumbs_down" else "-",
        )
    for i, (name, t) in enumerate(markers):
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
        ax.text(t, (1.01 + 0.045 * (i % 3)) * metric.top, name, rotation=0, fontsize=7, ha="left")
    ax.set_xlabel("seconds since the simulation started")
    ax.set_ylim(0, 1.15 * metric.top)
    ax.set_title(f"Refinery closed loop: {len(sim.requests)} requests at {sim.config.rate:g}/s")
    ax.legend(loc="lower left", fontsize=8)
    png = out_dir / "closed_loop.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)

    figure = go.Figure()
    for label, key in series:
        points = [(b["t"], b[key]) for b in bins if b[key] is not None]
        figure.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=label))
    for name, t in markers:
        figure.add_vline(x=t, line_dash="dot", annotation_text=name, annotation_textangle=-90)
    figure.update_layout(
        title="Refinery closed loop",
        xaxis_title="seconds since start",
        yaxis_range=[0, 1.05 * metric.top],
    )
    html = out_dir / "closed_loop.html"
    figure.write_html(html, include_plotlyjs=True)
    return [png, html]


def report(sim: Simulation, timeline: Timeline) -> dict[str, Any]:
    quality = phase_accuracy(sim, timeline)
    top = sim.metric.top  # the runs' golden figures are 0-1: shown in the metric's units

    def scaled(v: float | None) -> float | None:
        return None if v is None else v * top

    return {
        "requests": len(sim.requests),
        "answered": sum(r.status == "ok" for r in sim.requests),
        "errors": sum(r.status == "error" for r in sim.requests),
        "feedback_sent": sim.feedback_sent,
        "feedback_failed": sim.feedback_failed,
        "timeline_s_after_onset": dict(timeline.rows()),
        "split_s": timeline.split(),
        sim.metric.name: quality,  # "accuracy", or "chrF" for free text
        "rounds": [
            {
                "trigger_id": r.trigger_id,
                "kind": r.kind,
                "outcome": r.outcome,
                "version": r.version,
                "new_domain_ratings_before_snapshot": r.new_domain_ratings,
                "recovered": recovery(quality, f"after v{r.version}"),
                "golden": {
                    "champion": scaled(r.run.golden_champion) if r.run else None,
                    "challenger": scaled(r.run.golden_challenger) if r.run else None,
                },
                "mlflow_run": r.run.url if r.run else None,
            }
            for r in timeline.rounds
        ],
    }


def print_report(
    summary: dict[str, Any], files: list[Path], settings: Settings, metric: TaskMetric = ACCURACY
) -> None:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:7.1f} s"

    def pct(v: float | None) -> str:
        return "  -  " if v is None else f"{v:5.{metric.digits}f}"

    print("\nTimeline (seconds after drift onset)")
    for name, t in summary["timeline_s_after_onset"].items():
        print(f"  {s(t)}  {name}")
    if summary["split_s"]:
        print("\nOnset to served (first round), by part")
        for part, t in summary["split_s"].items():
            print(f"  {part:<11} {s(t)}")
    title = f"{metric.name} (0-{metric.top:g})" if metric.graded else "Accuracy"
    print(f"\n{title} from the simulator's ground truth ({OLD_DOMAIN} / {NEW_DOMAIN})")
    for phase, by_domain in summary[metric.name].items():
        print(f"  {phase:<16} {pct(by_domain[OLD_DOMAIN])} / {pct(by_domain[NEW_DOMAIN])}")
    for i, r in enumerate(summary["rounds"], start=1):
        kind = r["kind"]
        golden, recovered = r["golden"], r["recovered"]
        print(
            f"  round {i} ({kind}): v{r['version'] or '-'} {r['outcome'] or 'undecided'}, "
            f"{r['new_domain_ratings_before_snapshot']} {NEW_DOMAIN} ratings before its "
            f"snapshot; golden set {pct(golden['champion'])} -> {pct(golden['challenger'])}"
            + (f"; {NEW_DOMAIN} at {recovered:.1%} of before the drift" if recovered else "")
        )
    print(
        f"\n{summary['requests']} requests, {summary['answered']} answered, "
        f"{summary['errors']} errors; {summary['feedback_sent']} ratings sent"
    )
    for f in files:
        print(f"plot: {f}")
    for r in summary["rounds"]:
        if r["mlflow_run"]:
            print(f"MLflow run: {r['mlflow_run']}")
    print(f"Evidently dashboard and window reports: {settings.evidently_ui_url}")
    print("Decisions and alerts: ./refinery alerts (--follow); the loop: ./refinery status")


def reset(settings: Settings) -> None:
    """Stop everything and remove the stack's state (Kafka data, registry, models, logs)."""
    from refinery.stack.stack import Stack

    Stack(settings).down()
    if settings.var_dir.exists():
        keep = {"toolchain.env"}  # written by `make setup`
        for child in settings.var_dir.iterdir():
            if child.name in keep:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def save_summary(summary: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def run_demo(settings: Settings, config: SimulationConfig, api_key: str | None, fresh: bool) -> int:
    """The whole loop from the current state (``fresh``: from an empty ``var/``)."""
    import asyncio
    import time

    from refinery.common.task import load_task
    from refinery.stack.stack import Stack

    started = time.monotonic()
    if fresh:
        reset(settings)
    Stack(settings).up()
    print(f"stack up in {time.monotonic() - started:.0f} s; simulating traffic...", flush=True)
    key = api_key or settings.admin_key_path.read_text().strip()
    task = load_task(settings.task_file).task
    retraining = Retraining(settings)
    try:
        sim = asyncio.run(
            simulate(
                settings.gateway_url,
                key,
                settings.registered_model,
                task,
                config,
                done=until_promoted_then(config.after_promotion_s, busy=retraining),
            )
        )
    finally:
        retraining.close()
    out_dir = settings.var_dir / "demo"
    sim.save(out_dir / "requests.jsonl")
    timeline = build_timeline(settings, sim)
    summary = report(sim, timeline)
    summary["wall_clock_s"] = time.monotonic() - started
    files = [*plot(sim, timeline, out_dir), save_summary(summary, out_dir)]
    print_report(summary, files, settings, sim.metric)
    print(f"\nmake demo wall clock: {summary['wall_clock_s']:.0f} s")
    first = timeline.first_promoted
    return 0 if first is not None and first.first_served is not None else 1
