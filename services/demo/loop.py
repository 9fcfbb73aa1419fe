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

from services.common.events import AlertEvent, Event, ModelEvent, TriggerEvent
from services.common.kafka import EventConsumer
from services.common.settings import Settings
from services.common.topics import Stream
from services.demo.simulate import (
    ACCURACY,
    Request,
    Simulation,
    SimulationConfig,
    TaskMetric,
    simulate,
    until_promoted_then,
)

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


@dataclass(frozen=True)
class Timeline:
    """Seconds after drift onset (None: did not happen)."""

    onset_at: float
    alert: float | None
    trigger: float | None
    trigger_id: str | None
    run_id: str | None
    run_url: str | None
    run_start: float | None
    data_s: float | None
    training_s: float | None
    evaluation_s: float | None
    promoted: float | None
    promoted_version: str | None
    first_served: float | None
    golden_before: float | None  # golden set, champion then challenger, in the task metric
    golden_after: float | None

    def rows(self) -> list[tuple[str, float | None]]:
        return [
            ("drift onset (new product line)", 0.0),
            ("first drift alert", self.alert),
            ("retrain trigger", self.trigger),
            ("retraining run started", self.run_start),
            ("promoted (model event)", self.promoted),
            ("first answer from the new version", self.first_served),
        ]

    def split(self) -> dict[str, float | None]:
        """Onset to served, in the issue's parts: detection (onset to trigger), data (trigger
        to training: pick-up, collection, cleaning), training, evaluation, and switch (gate,
        registration, promotion event, the gateway loading the adapter, first answer)."""
        if None in (self.trigger, self.run_start, self.first_served, self.training_s):
            return {}
        assert self.trigger is not None and self.run_start is not None
        assert self.first_served is not None
        data = (self.run_start - self.trigger) + (self.data_s or 0.0)
        training, evaluation = self.training_s or 0.0, self.evaluation_s or 0.0
        return {
            "detection": self.trigger,
            "data": data,
            "training": training,
            "evaluation": evaluation,
            "switch": self.first_served - self.trigger - data - training - evaluation,
            "total": self.first_served,
        }


def build_timeline(settings: Settings, sim: Simulation) -> Timeline:
    from mlflow import MlflowClient

    onset = sim.onset_at
    after = [e for e in read_stream(settings, Stream.ALERTS) if isinstance(e, AlertEvent)]
    alerts = sorted(_epoch(e.occurred_at) for e in after if _epoch(e.occurred_at) >= onset)
    triggers = sorted(
        (e for e in read_stream(settings, Stream.TRIGGERS) if isinstance(e, TriggerEvent)),
        key=lambda e: e.occurred_at,
    )
    trigger = next((t for t in triggers if _epoch(t.occurred_at) >= onset), None)
    models = [e for e in read_stream(settings, Stream.MODELS) if isinstance(e, ModelEvent)]
    promoted = next(
        (
            m
            for m in sorted(models, key=lambda m: m.occurred_at)
            if m.action == "promoted" and _epoch(m.occurred_at) >= onset
        ),
        None,
    )
    run_id = run_start = run_url = None
    metrics: dict[str, float] = {}
    if trigger is not None:
        from services.common.task import load_task
        from services.retrainer.pipeline import Retrainer

        run = Retrainer(settings, load_task(settings.task_file)).find_run(trigger.trigger_id)
        if run is not None:
            run_id = run.info.run_id
            run_start = run.info.start_time / 1000
            run_url = f"{settings.mlflow_uri}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
            metrics = MlflowClient(settings.mlflow_uri).get_run(run_id).data.metrics
    first_served = None
    if promoted is not None:
        served = next(
            (r for r in sim.requests if r.status == "ok" and r.version == promoted.served_name),
            None,
        )
        first_served = sim.started_at + served.t if served else None

    def rel(t: float | None) -> float | None:
        return None if t is None else t - onset

    def golden(who: str) -> float | None:
        value = metrics.get(f"golden_{who}_{sim.metric.golden_key}")
        return None if value is None else value * sim.metric.golden_scale

    return Timeline(
        onset_at=onset,
        alert=rel(alerts[0]) if alerts else None,
        trigger=rel(_epoch(trigger.occurred_at)) if trigger else None,
        trigger_id=trigger.trigger_id if trigger else None,
        run_id=run_id,
        run_url=run_url,
        run_start=rel(run_start),
        data_s=metrics.get("data_seconds"),
        training_s=metrics.get("training_seconds"),
        evaluation_s=metrics.get("evaluation_seconds"),
        promoted=rel(_epoch(promoted.occurred_at)) if promoted else None,
        promoted_version=promoted.version if promoted else None,
        first_served=rel(first_served),
        golden_before=golden("champion"),
        golden_after=golden("challenger"),
    )


def phase_accuracy(sim: Simulation, timeline: Timeline) -> dict[str, dict[str, float | None]]:
    """The task metric (accuracy, or chrF for free text) by phase and domain, measured from
    the simulator's ground truth."""
    onset = sim.config.shift_at_s
    served = timeline.first_served + onset if timeline.first_served is not None else float("inf")
    new = f"-v{timeline.promoted_version}" if timeline.promoted_version else None
    phases: dict[str, list[Request]] = {
        "before drift": [r for r in sim.requests if r.t < onset],
        "after drift": [r for r in sim.requests if onset <= r.t < served],
        "after promotion": [
            r for r in sim.requests if r.t >= served and new and r.version.endswith(new)
        ],
    }
    return {
        phase: {
            domain: sim.metric.of([r for r in requests if r.domain == domain])
            for domain in ("retail", "smart_home")
        }
        for phase, requests in phases.items()
    }


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
        if t is not None and name != "retraining run started"
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
    return {
        "requests": len(sim.requests),
        "answered": sum(r.status == "ok" for r in sim.requests),
        "errors": sum(r.status == "error" for r in sim.requests),
        "feedback_sent": sim.feedback_sent,
        "feedback_failed": sim.feedback_failed,
        "timeline_s_after_onset": dict(timeline.rows()),
        "split_s": timeline.split(),
        sim.metric.name: quality,  # "accuracy", or "chrF" for free text
        "golden": {"before": timeline.golden_before, "after": timeline.golden_after},
        "promoted_version": timeline.promoted_version,
        "mlflow_run": timeline.run_url,
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
        print("\nOnset to served, by part")
        for part, t in summary["split_s"].items():
            print(f"  {part:<11} {s(t)}")
    title = f"{metric.name} (0-{metric.top:g})" if metric.graded else "Accuracy"
    print(f"\n{title} from the simulator's ground truth (retail / smart_home)")
    for phase, by_domain in summary[metric.name].items():
        print(f"  {phase:<16} {pct(by_domain['retail'])} / {pct(by_domain['smart_home'])}")
    golden = summary["golden"]
    print(
        f"  golden set       {pct(golden['before'])} -> {pct(golden['after'])} (MLflow evaluation)"
    )
    print(
        f"\n{summary['requests']} requests, {summary['answered']} answered, "
        f"{summary['errors']} errors; {summary['feedback_sent']} ratings sent"
    )
    for f in files:
        print(f"plot: {f}")
    if summary["mlflow_run"]:
        print(f"MLflow run: {summary['mlflow_run']}")
    workspace = settings.var_dir / "monitor" / "workspace"
    print(f"Evidently dashboard: evidently ui --workspace {workspace} --port 8010")


def reset(settings: Settings) -> None:
    """Stop everything and remove the stack's state (Kafka data, registry, models, logs)."""
    from services.stack.stack import Stack

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

    from services.common.task import load_task
    from services.stack.stack import Stack

    started = time.monotonic()
    if fresh:
        reset(settings)
    Stack(settings).up()
    print(f"stack up in {time.monotonic() - started:.0f} s; simulating traffic...", flush=True)
    key = api_key or settings.admin_key_path.read_text().strip()
    task = load_task(settings.task_file).task
    sim = asyncio.run(
        simulate(
            settings.gateway_url,
            key,
            settings.registered_model,
            task,
            config,
            done=until_promoted_then(config.after_promotion_s),
        )
    )
    out_dir = settings.var_dir / "demo"
    sim.save(out_dir / "requests.jsonl")
    timeline = build_timeline(settings, sim)
    summary = report(sim, timeline)
    summary["wall_clock_s"] = time.monotonic() - started
    files = [*plot(sim, timeline, out_dir), save_summary(summary, out_dir)]
    print_report(summary, files, settings, sim.metric)
    print(f"\nmake demo wall clock: {summary['wall_clock_s']:.0f} s")
    return 0 if timeline.first_served is not None else 1
