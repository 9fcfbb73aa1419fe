"""A closed window as Evidently sees it: the snapshot that goes to the workspace (and to
the alert's HTML report), and the project dashboard that plots the snapshots.

The drift tests decide in :func:`refinery.monitor.drift.detect_drift`; some run inside
Evidently (KS, embedding drift), some in the monitor (chi-square, the thumbs-down test).
The window's snapshot shows every one that decided as a :class:`MonitorValue` with its
method and threshold, next to Evidently's own per-column drift widgets, plus what the
dashboard plots: the share of drifted columns, the thumbs-down rate and the share of
thumbs-up (quality as users rated it), and the window's counts. It is tagged with the
model version (``v2``), ``drifted`` or ``stable``, and the drift episode it belongs to
(``episode-<start>``), so the UI's reports list can be filtered; its metadata holds the
window's bounds and drifted columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from evidently import Dataset, Report
from evidently._pydantic_compat import PrivateAttr
from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric
from evidently.core.report import Snapshot
from evidently.metrics import ValueDrift
from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel, text_panel

from refinery.monitor.drift import (
    CATEGORICAL,
    EMBEDDINGS,
    FREE_TEXT_CATEGORICAL,
    NUMERIC,
    THUMBS_DOWN,
    DriftResult,
    ThumbsCount,
)

WINDOW, FEEDBACK = "window", "feedback"  # the ``column`` of the values that are no test
#: The dashboard's counters, summed over the windows: (title, column, method, legend).
COUNTERS = (
    ("Windows tested", WINDOW, "count", "windows"),
    ("Predictions tested", WINDOW, "predictions", "predictions"),
    ("Ratings counted", FEEDBACK, "ratings", "ratings"),
    ("Drifted windows", WINDOW, "drifted", "drifted windows"),
)


class MonitorValue(SingleValueMetric):
    """A value the monitor computed (a test's score, a rate, a count), shown and plotted
    as an Evidently metric. ``column``, ``method`` and ``threshold`` are its labels (one
    dashboard series per column and method); the value is private, or every window would
    be a series of its own."""

    class Config:
        # Under Evidently's own namespace: the UI (0.7.23) draws no series of another.
        type_alias = "evidently:metric_v2:MonitorValue"

    column: str
    method: str
    threshold: float | None = None
    # The line of a plot it belongs to when one value splits by model version: a label,
    # since the UI (0.7.23) misaligns series filtered by different tags.
    series: str | None = None
    _value: float = PrivateAttr(default=float("nan"))

    def __init__(
        self,
        column: str,
        method: str,
        value: float,
        threshold: float | None = None,
        series: str | None = None,
    ):
        super().__init__(column=column, method=method, threshold=threshold, series=series)
        self._value = float(value)


class MonitorValueCalculation(SingleValueCalculation[MonitorValue]):
    def calculate(self, context: Any, current_data: Any, reference_data: Any) -> Any:
        return self.result(self.metric._value)

    def display_name(self) -> str:
        m = self.metric
        judged = "" if m.threshold is None else f" (threshold {m.threshold:.3g})"
        return f"{m.column}: {m.method}{judged}"


@dataclass(frozen=True)
class WindowLabels:
    """Where a window sits: what the snapshot is tagged with and plotted at."""

    version: str
    index: int
    start: datetime
    end: datetime
    episode: datetime | None  # the start of the drift episode it belongs to; None: stable

    def tags(self, drifted: bool) -> list[str]:
        tags = [f"v{self.version}", "drifted" if drifted else "stable"]
        return tags + ([f"episode-{self.episode:%Y%m%dT%H%M%S}"] if self.episode else [])

    def metadata(self, drifted_columns: list[str]) -> dict[str, str]:
        return {
            "model_version": self.version,
            "window_index": str(self.index),
            "window_start": self.start.isoformat(),
            "window_end": self.end.isoformat(),
            "drifted_columns": ",".join(drifted_columns) or "-",
            "episode": self.episode.isoformat() if self.episode else "-",
        }


def window_snapshot(
    result: DriftResult, labels: WindowLabels, thumbs: ThumbsCount | None, detailed: bool
) -> Snapshot:
    """The window's snapshot: every deciding test with its threshold, the values the
    dashboard plots, and when ``detailed`` (a drifted window ops are notified of)
    Evidently's drift widgets of the numeric columns (the distributions ops compare). The
    others go without them: drawing them was most of a window's cost (0.29 s of plotly per
    window, for 200 predictions; 0.4 s drifted) and of its size in the UI's memory."""
    values = [MonitorValue(m.column, m.method, m.score, m.threshold) for m in result.metrics]
    drifted = result.drifted_columns
    tested = [m for m in result.metrics if m.column != THUMBS_DOWN]
    state = "drifted" if drifted else "stable"
    values += [
        MonitorValue(WINDOW, "drifted_share", sum(m.drifted for m in tested) / len(tested)),
        MonitorValue(WINDOW, "predictions", len(result.current)),
        MonitorValue(WINDOW, f"{state}_predictions", len(result.current)),
        MonitorValue(WINDOW, "count", 1),
        MonitorValue(WINDOW, "drifted", int(bool(drifted))),
    ]
    if thumbs is not None and thumbs.total:
        values += [
            MonitorValue(FEEDBACK, "thumbs_down_rate", thumbs.rate),
            MonitorValue(FEEDBACK, "thumbs_up_share", 1 - thumbs.rate, series=labels.version),
            MonitorValue(FEEDBACK, "ratings", thumbs.total),
        ]
    widgets = [
        ValueDrift(column=m.column, method="ks", threshold=m.threshold)
        for m in result.metrics
        if m.method == "ks" and detailed
    ]
    current, reference = (
        Dataset.from_pandas(frame, data_definition=result.definition)
        for frame in (result.current, result.reference)
    )
    return Report([*values, *widgets]).run(
        current,
        reference,
        # Evidently keeps naive timestamps: the window's end, in UTC.
        timestamp=labels.end.astimezone(UTC).replace(tzinfo=None),
        tags=labels.tags(bool(drifted)),
        metadata=labels.metadata(drifted),  # type: ignore[arg-type]
    )


def _series(column: str, method: str, legend: str, series: str | None = None) -> PanelMetric:
    labels = {"column": column, "method": method}
    return PanelMetric(
        legend=legend,
        metric="evidently:metric_v2:MonitorValue",
        metric_labels=labels | ({"series": series} if series else {}),
    )


def dashboard(versions: Iterable[str], free_text: bool) -> DashboardModel:
    """The project's dashboard: drift, quality from feedback per model version, counts."""
    categorical = FREE_TEXT_CATEGORICAL if free_text else CATEGORICAL
    p_values = [_series(c, "ks", c) for c in NUMERIC]
    p_values += [_series(c, "chi2_contingency", c) for c in categorical]
    panels = [
        text_panel(
            title="Refinery drift monitor",
            description="One snapshot per closed window, tagged with the model version, "
            "drifted or stable, and its drift episode (filter them under Reports).",
        ),
        line_plot_panel(
            title="Drift share per window",
            description="Share of the feature columns whose test rejected (Bonferroni)",
            values=[_series(WINDOW, "drifted_share", "drifted share")],
            size="half",
        ),
        line_plot_panel(
            title="Thumbs-down rate",
            description="Share of the window's ratings that were thumbs-down",
            values=[_series(FEEDBACK, "thumbs_down_rate", "thumbs-down rate")],
            size="half",
        ),
        line_plot_panel(
            title="p-value per feature",
            description="KS (numbers) and chi-square (categories); drift below the threshold",
            values=p_values,
        ),
        line_plot_panel(
            title="Thumbs-down test p-value",
            description="One-sided, against the champion's reference window",
            values=[_series(THUMBS_DOWN, "two_proportion_z", "p-value")],
            size="half",
        ),
        line_plot_panel(
            title="Quality from feedback, per model version",
            description="Share of thumbs-up among the window's ratings",
            values=[
                _series(FEEDBACK, "thumbs_up_share", f"v{v}", series=v)
                for v in sorted(versions, key=_version_order)
            ],
            size="half",
        ),
        *(
            counter_panel(
                title=title,
                values=[_series(column, method, legend)],
                aggregation="sum",
                size="half",
            )
            for title, column, method, legend in COUNTERS
        ),
        bar_plot_panel(
            title="Predictions per window: drifted or stable",
            values=[
                _series(WINDOW, "drifted_predictions", "drifted"),
                _series(WINDOW, "stable_predictions", "stable"),
            ],
            stacked=True,
        ),
    ]
    if free_text:
        panels.insert(
            4,
            line_plot_panel(
                title="Embedding drift (classifier ROC AUC)",
                description="Prompts and answers; drift above the threshold",
                values=[_series(n, "embedding_classifier_auc", n) for n in EMBEDDINGS],
            ),
        )
    tab = DashboardTabModel(title="Drift", panels=[p.id for p in panels])
    return DashboardModel(tabs=[tab], panels=panels)


def dashboard_versions(model: DashboardModel) -> set[str]:
    """The model versions a saved dashboard plots quality for."""
    return {
        value.metric_labels["series"]
        for panel in model.panels
        for value in panel.values
        if value.metric_labels.get("method") == "thumbs_up_share"
        and "series" in value.metric_labels
    }


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (0, version)
