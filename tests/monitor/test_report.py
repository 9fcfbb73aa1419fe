"""A window's Evidently snapshot shows every test that decided, with its threshold, and is
tagged so the UI can filter; the dashboard is defined in code, with a quality series per
model version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from evidently.ui.workspace import Workspace

from refinery.monitor.drift import NUMERIC, ThumbsCount, detect_drift
from refinery.monitor.report import (
    WindowLabels,
    dashboard,
    dashboard_versions,
    window_snapshot,
)
from tests.monitor.test_drift import rows

END = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EPISODE = END - timedelta(minutes=10)


def test_a_drifted_windows_snapshot_holds_every_deciding_test_and_its_labels(
    tmp_path: Path,
) -> None:
    result = detect_drift(
        rows("retail", 400, seed=1),
        rows("smart_home", 200, seed=3),
        p_value=0.001,
        reference_thumbs=ThumbsCount(20, 200),
        current_thumbs=ThumbsCount(70, 200),
    )
    labels = WindowLabels("2", 7, END - timedelta(minutes=5), END, EPISODE)
    snapshot = window_snapshot(result, labels, ThumbsCount(70, 200), detailed=True)
    shown = {
        (m["config"].get("column"), m["config"].get("method")): m
        for m in snapshot.dict()["metrics"]
        if m["config"]["type"] == "evidently:metric_v2:MonitorValue"
    }
    for m in result.metrics:  # KS, chi-square and the thumbs-down test alike
        value = shown[(m.column, m.method)]
        assert value["value"] == m.score and value["config"]["threshold"] == m.threshold
    tested = [m for m in result.metrics if m.column != "thumbs_down_rate"]
    share = sum(m.drifted for m in tested) / len(tested)
    assert shown[("window", "drifted_share")]["value"] == share > 0
    assert shown[("window", "predictions")]["value"] == 200
    assert shown[("feedback", "thumbs_down_rate")]["value"] == 0.35
    assert shown[("feedback", "thumbs_up_share")]["value"] == 0.65
    model = snapshot.to_snapshot_model()
    assert model.tags == ["v2", "drifted", "episode-20261130T115000"]
    assert model.metadata["window_index"] == "7" and "segment" in model.metadata["drifted_columns"]
    assert model.timestamp == END.replace(tzinfo=None)
    snapshot.save_html(str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    assert "thumbs_down_rate: two_proportion_z" in html and "segment: chi2_contingency" in html


def test_a_stable_window_is_tagged_stable_with_no_episode() -> None:
    result = detect_drift(rows("retail", 400, seed=1), rows("retail", 200, seed=4), 0.001)
    snapshot = window_snapshot(result, WindowLabels("1", 1, END, END, None), None, detailed=False)
    assert snapshot.to_snapshot_model().tags == ["v1", "stable"]
    assert not [m for m in snapshot.dict()["metrics"] if "ValueDrift" in m["config"]["type"]]


def test_a_notifying_window_shows_each_numeric_columns_distributions_the_others_do_not() -> None:
    result = detect_drift(rows("retail", 400, seed=1), rows("smart_home", 200, seed=3), 0.001)
    labels = WindowLabels("1", 1, END, END, EPISODE)

    def drawn(detailed: bool) -> list[str]:
        snapshot = window_snapshot(result, labels, None, detailed)
        assert "drifted" in snapshot.to_snapshot_model().tags  # tagged alike either way
        metrics = snapshot.dict()["metrics"]
        return [m["config"]["column"] for m in metrics if "ValueDrift" in m["config"]["type"]]

    assert drawn(detailed=True) == list(NUMERIC)
    assert drawn(detailed=False) == []  # a drifted window of an episode ops already know of


def test_the_dashboard_plots_each_model_versions_quality(tmp_path: Path) -> None:
    workspace = Workspace.create(str(tmp_path))
    project = workspace.create_project("p")
    workspace.save_dashboard(project.id, dashboard(["10", "2"], free_text=False))
    saved = workspace.get_dashboard(project.id)
    titles = [p.title for p in saved.panels]
    assert "Drift share per window" in titles and "p-value per feature" in titles
    assert "Embedding drift (classifier ROC AUC)" not in titles  # labels: no embeddings
    quality = next(p for p in saved.panels if p.title.startswith("Quality from feedback"))
    assert [v.legend for v in quality.values] == ["v2", "v10"]
    assert dashboard_versions(saved) == {"2", "10"}
    free_text = dashboard([], free_text=True)
    assert "Embedding drift (classifier ROC AUC)" in [p.title for p in free_text.panels]
    assert len(free_text.tabs[0].panels) == len(free_text.panels)  # each panel once
