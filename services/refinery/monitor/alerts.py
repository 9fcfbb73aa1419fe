"""Turning a drift result into what ops see: a run in the Evidently workspace (the UI's
project, whose dashboard is defined here in code), an alert event linking to that run's
report in the UI, a saved HTML copy of it, and a Slack-compatible webhook POST.

Ops are told once per drift episode (refinery/monitor/notices.py), quality and operational
apart: only a window that notifies gets the per-column widgets, the copy and the POST; the
others are recorded and sent on Kafka."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from evidently.core.report import Snapshot

from refinery.common.events import (
    EPISODE_KINDS,
    AlertEvent,
    EpisodeKind,
    columns_of,
    episode_kind,
)
from refinery.monitor.drift import DriftResult, ThumbsCount, describe
from refinery.monitor.notices import Decision, severity_of
from refinery.monitor.report import WindowLabels, dashboard, dashboard_versions, window_snapshot
from refinery.monitor.workspace import WindowWorkspace

log = logging.getLogger(__name__)

PROJECT_NAME = "refinery drift"
_ALERT_NS = uuid.UUID("0b6f3c1e-7d2a-4c8e-b5f4-3e9a1d6c2f70")


@dataclass(frozen=True)
class Window:
    """The current window a drift result was computed on."""

    index: int
    start: datetime
    end: datetime
    size: int
    reference_version: str
    episode: datetime | None = None  # the start of the retrain trigger's drift episode
    thumbs: ThumbsCount | None = None  # the champion's ratings in it
    # Whether ops are told of it, per kind of episode (None: not decided, as in tests;
    # drifted means told).
    decisions: dict[EpisodeKind, Decision] | None = None

    def detailed(self, drifted: bool) -> bool:
        """Its report gets the per-column widgets and a copy on disk: it notifies ops."""
        if self.decisions is None:
            return drifted
        return any(decision.detailed for decision in self.decisions.values())

    @property
    def labels(self) -> WindowLabels:
        return WindowLabels(self.reference_version, self.index, self.start, self.end, self.episode)

    def alert_id(self, kind: EpisodeKind) -> str:
        """The event id of this window's alert of ``kind``: a replay that closes the same
        window again after a crash alerts under the same id (consumers dedup by event id)."""
        name = f"v{self.reference_version}/{self.index}/{self.start.isoformat()}"
        return str(uuid.uuid5(_ALERT_NS, name if kind == "quality" else f"{name}/{kind}"))


_HEADLINES = {
    None: ":warning: *{severity}* {kind} drift in {columns}",
    "opened": ":warning: *{severity}* {kind} drift in {columns}",
    "escalated": ":rotating_light: *{severity}* {kind} drift grew, now in {columns}",
    "reminder": ":warning: *{severity}* {kind} drift goes on, in {columns}",
    "resolved": ":white_check_mark: {kind} drift resolved: this window is stable",
}


def slack_payload(alert: AlertEvent) -> dict[str, Any]:
    headline = _HEADLINES[alert.notice].format(
        severity=alert.severity, kind=alert.episode_kind, columns=", ".join(alert.drifted_columns)
    )
    since = (
        f", episode since {alert.episode_start:%Y-%m-%d %H:%M:%S}" if alert.episode_start else ""
    )
    lines = [
        f"{headline} (window {alert.window_start:%Y-%m-%d %H:%M:%S} to "
        f"{alert.window_end:%H:%M:%S} UTC{since}, {alert.window_size} predictions, "
        f"reference v{alert.reference_version})"
    ]
    lines += [f"• {m.column}: {m.method} {describe(m)}" for m in alert.metrics if m.drifted]
    if alert.report_url:
        lines.append(f"report: {alert.report_url}")
    return {"text": "\n".join(lines)}


@dataclass(frozen=True)
class Recorded:
    """A window's snapshot as the workspace holds it."""

    snapshot: Snapshot
    snapshot_id: str


class AlertPublisher:
    """Records each window, makes its alerts, saves a notifying one's report (the worker
    posts the webhook: :func:`post_webhook` with :func:`slack_payload`)."""

    def __init__(
        self,
        reports_dir: Path,
        workspace_dir: Path,
        free_text: bool = False,
        ui_url: str | None = None,
        kept: int = 500,
    ) -> None:
        reports_dir.mkdir(parents=True, exist_ok=True)
        self.reports_dir = reports_dir
        self.kept = kept
        self.workspace = WindowWorkspace(workspace_dir, kept)
        found = self.workspace.search_project(PROJECT_NAME)
        if found:
            self.project = found[0]
        else:
            self.project = self.workspace.create_project(
                PROJECT_NAME, description="Drift windows of the Refinery monitor"
            )
            self.workspace.save_dashboard(self.project.id, dashboard([], free_text))
        self.free_text = free_text
        self.versions = dashboard_versions(self.workspace.get_dashboard(self.project.id))
        self.ui_url = ui_url.rstrip("/") if ui_url else None

    def record(self, result: DriftResult, window: Window) -> Recorded:
        """Every window goes to the workspace, drifted or not: the dashboard shows the
        trend. A model version seen for the first time gets its quality series."""
        detailed = window.detailed(bool(result.drifted_columns))
        snapshot = window_snapshot(result, window.labels, window.thumbs, detailed)
        name = f"window {window.index} v{window.reference_version} {window.end:%Y-%m-%d %H:%M:%S}"
        ref = self.workspace.add_run(self.project.id, snapshot, name=name)
        if window.reference_version not in self.versions:
            self.versions.add(window.reference_version)
            self.workspace.save_dashboard(self.project.id, dashboard(self.versions, self.free_text))
        return Recorded(snapshot, str(ref.id))

    def report_url(self, recorded: Recorded) -> str:
        """The window's report in the Evidently UI."""
        return f"{self.ui_url}/projects/{self.project.id}/reports/{recorded.snapshot_id}"

    def alerts(self, result: DriftResult, window: Window, recorded: Recorded) -> list[AlertEvent]:
        """An alert for each kind of episode the window drifted in, or that it resolved
        (none: neither). The worker sends them once the window's close is recorded (and
        posts those that notify), then writes the report's copy on disk
        (:meth:`save_copy`) for a notifying one. The link is the report in the UI, or that
        copy when no UI is configured (none for a window without a copy)."""
        drifted = result.drifted_columns
        if self.ui_url:
            link: str | None = self.report_url(recorded)
        elif window.detailed(bool(drifted)):
            link = self.copy_path(window).resolve().as_uri()
        else:
            link = None
        alerts = []
        for kind in EPISODE_KINDS:
            columns = columns_of(kind, drifted)
            decision = window.decisions.get(kind) if window.decisions is not None else None
            if not columns and not (decision and decision.notice == "resolved"):
                continue
            severity = decision.severity if decision else severity_of(columns, result.metrics)
            alerts.append(
                AlertEvent(
                    event_id=window.alert_id(kind),
                    episode_kind=kind,
                    window_start=window.start,
                    window_end=window.end,
                    window_size=window.size,
                    drifted_columns=columns,
                    # Its kind's tests only: an operational alert lists no data drift.
                    metrics=[m for m in result.metrics if episode_kind(m.column) == kind],
                    reference_version=window.reference_version,
                    report_url=link,
                    severity=severity,
                    episode_start=decision.began if decision else None,
                    notice=decision.notice if decision else None,
                )
            )
        return alerts

    def copy_path(self, window: Window) -> Path:
        # Names sort by the window's end: the oldest first.
        return self.reports_dir / f"drift-{window.end:%Y%m%dT%H%M%S%f}.html"

    def save_copy(self, recorded: Recorded, window: Window) -> Path:
        """A drifted window's report as one HTML file, written whole (renamed in); only the
        newest ``kept`` stay. Rendering takes seconds on a busy host (4-11 s beside the
        loaded stack), so the worker does it after the window's alert and trigger are out."""
        path = self.copy_path(window)
        partial = path.with_name(path.name + ".part")
        recorded.snapshot.save_html(str(partial))
        partial.replace(path)
        for old in sorted(self.reports_dir.glob("drift-*.html"))[: -self.kept]:
            old.unlink(missing_ok=True)
        return path


def post_webhook(url: str | None, payload: dict[str, Any]) -> bool:
    """POST a Slack-compatible message to ``url`` (None: no webhook configured); a failure
    is logged, since ops still get the alert or decision on Kafka and the CLI."""
    if not url:
        return False
    try:
        httpx.post(url, json=payload, timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("webhook %s failed: %s", url, exc)
        return False
    return True
