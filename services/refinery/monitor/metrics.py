"""Prometheus metrics of a monitor worker (served on ``monitor_metrics_port``).

What ops watch: events read per stream and what became of them, the join state this
worker holds, windows closed (drifted or not) with the last window's test scores and
thresholds, alerts and triggers sent, and the worker's consumer lag per topic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from refinery.common.events import AlertEvent, DriftMetric, TriggerEvent

WINDOW_SECONDS_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "refinery_monitor_events",
            "Records read from the traffic topics, by stream and outcome",
            ["stream", "outcome"],  # joined | dead_letter | shadow
            registry=r,
        )
        self.examples = Counter(
            "refinery_monitor_examples", "Labeled examples written (joined ratings)", registry=r
        )
        self.window_rows = Counter(
            "refinery_monitor_window_rows",
            "Predictions this worker's block keepers gathered for the drift windows",
            registry=r,
        )
        self.join_keys = Gauge(
            "refinery_monitor_join_keys", "Join state entries this worker holds", registry=r
        )
        self.windows = Counter(
            "refinery_monitor_windows", "Drift windows closed", ["drifted"], registry=r
        )
        self.window_seconds = Histogram(
            "refinery_monitor_window_test_seconds",
            "Time to test and record one closed window (its report copy is written after)",
            buckets=WINDOW_SECONDS_BUCKETS,
            registry=r,
        )
        self.window_predictions = Gauge(
            "refinery_monitor_window_predictions",
            "Predictions in the last closed window",
            registry=r,
        )
        self.last_window = Gauge(
            "refinery_monitor_last_window_end_timestamp_seconds",
            "End of the last closed window (its last prediction)",
            registry=r,
        )
        self.drift_score = Gauge(
            "refinery_monitor_drift_score",
            "The last window's test score per column (a p-value, or an AUC for embeddings)",
            ["column", "method"],
            registry=r,
        )
        self.drift_threshold = Gauge(
            "refinery_monitor_drift_threshold",
            "The threshold the column's score is judged against",
            ["column", "method"],
            registry=r,
        )
        self.drifted = Gauge(
            "refinery_monitor_column_drifted",
            "1 if the column drifted in the last window",
            ["column"],
            registry=r,
        )
        self.alerts = Counter(
            "refinery_monitor_alerts",
            "Drift alerts sent (a drifted window's, per kind of episode it drifted in)",
            ["severity", "episode_kind"],
            registry=r,
        )
        self.notices = Counter(
            "refinery_monitor_alert_notices",
            "Alerts ops were notified of (the webhook): once per drift episode and change",
            ["notice", "episode_kind"],  # opened | escalated | reminder | resolved
            registry=r,
        )
        self.triggers = Counter(
            "refinery_monitor_triggers",
            "Retrain triggers sent",
            ["kind"],  # drift | retry | refinement (TriggerEvent.kind)
            registry=r,
        )
        self.lag = Gauge(
            "refinery_monitor_consumer_lag",
            "Records not yet read by the monitor's consumer group, per topic",
            ["topic"],
            registry=r,
        )

    def watch_join_state(self, size: Callable[[], int]) -> None:
        """The join state's size, read at each scrape."""
        self.join_keys.set_function(lambda: float(size()))

    def window_closed(
        self, metrics: list[DriftMetric], predictions: int, end_timestamp: float, seconds: float
    ) -> None:
        drifted = any(m.drifted for m in metrics)
        self.windows.labels(drifted=str(drifted).lower()).inc()
        self.window_seconds.observe(seconds)
        self.window_predictions.set(predictions)
        self.last_window.set(end_timestamp)
        for m in metrics:
            self.drift_score.labels(column=m.column, method=m.method).set(m.score)
            self.drift_threshold.labels(column=m.column, method=m.method).set(m.threshold)
            self.drifted.labels(column=m.column).set(int(m.drifted))

    def sent(self, alerts: Sequence[AlertEvent], trigger: TriggerEvent | None) -> None:
        for alert in alerts:
            if not alert.resolved:
                self.alerts.labels(severity=alert.severity, episode_kind=alert.episode_kind).inc()
            if alert.notice is not None:
                self.notices.labels(notice=alert.notice, episode_kind=alert.episode_kind).inc()
        if trigger is not None:
            self.triggers.labels(kind=trigger.kind).inc()

    def set_lag(self, by_topic: dict[str, int]) -> None:
        for topic, records in by_topic.items():
            self.lag.labels(topic=topic).set(records)
