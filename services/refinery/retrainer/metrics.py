"""Prometheus metrics of the retrainer (served on ``retrainer_metrics_port``).

Runs by outcome and how long each step took, whether a run is going on, when the last
run ended and the last promotion came, and the registry's champion version: against the
gateway's ``refinery_served_model_version`` it says whether what serves is what won
(infra/prometheus/rules.yml alerts when they differ).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from refinery.retrainer.record import Timings

STEP_BUCKETS = (0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)


class RetrainerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "refinery_retrainer_runs",
            "Retraining runs finished, by outcome",
            ["outcome"],  # promoted | rejected | failed | already_done | interrupted
            registry=r,
        )
        self.step_seconds = Histogram(
            "refinery_retrainer_step_seconds",
            "Seconds per step of a run (data, training, evaluation, switch)",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.running = Gauge(
            "refinery_retrainer_running", "1 while a retraining run is going on", registry=r
        )
        self.last_run = Gauge(
            "refinery_retrainer_last_run_timestamp_seconds", "When the last run ended", registry=r
        )
        self.last_promotion = Gauge(
            "refinery_retrainer_last_promotion_timestamp_seconds",
            "When the retrainer last promoted a challenger",
            registry=r,
        )
        self.champion_version = Gauge(
            "refinery_retrainer_champion_version",
            "The registry version under the champion alias",
            registry=r,
        )

    def run_ended(self, outcome: str, timings: Timings | None) -> None:
        now = time.time()
        self.runs.labels(outcome=outcome).inc()
        self.last_run.set(now)
        if outcome == "promoted":
            self.last_promotion.set(now)
        for step, seconds in (timings.as_metrics() if timings else {}).items():
            self.step_seconds.labels(step=step.removesuffix("_seconds")).observe(seconds)

    def champion(self, version: str | None) -> None:
        if version is not None and version.isdigit():
            self.champion_version.set(int(version))
