"""Alerts: report saved, workspace run recorded, Slack-compatible webhook received."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import IO, ClassVar

import pytest
from evidently.ui.service.storage.local.base import LocalState
from evidently.ui.service.storage.local.watcher import WorkspaceDirHandler
from evidently.ui.workspace import Workspace
from uuid6 import uuid7
from watchdog.observers import Observer

from refinery.monitor.alerts import (
    PROJECT_NAME,
    AlertPublisher,
    Window,
    post_webhook,
    slack_payload,
)
from refinery.monitor.drift import ThumbsCount, detect_drift
from refinery.monitor.notices import Decision
from refinery.monitor.workspace import STALE_PARTIAL_S
from tests.monitor.test_drift import rows

END = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WINDOW = Window(index=3, start=END - timedelta(minutes=5), end=END, size=200, reference_version="1")


class Webhook(BaseHTTPRequestHandler):
    """A Slack-like endpoint that keeps what it was sent (also used by test_drift_stream)."""

    received: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Webhook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_drifted_window_is_reported_everywhere_ops_look(tmp_path: Path) -> None:
    Webhook.received.clear()
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        publisher = AlertPublisher(tmp_path / "reports", tmp_path / "workspace")
        reference = rows("retail", 400, seed=1)
        shifted = detect_drift(
            reference,
            rows("smart_home", 200, seed=3),
            p_value=0.001,
            reference_thumbs=ThumbsCount(20, 200),
            current_thumbs=ThumbsCount(70, 200),
        )
        stable = detect_drift(reference, rows("retail", 200, seed=4), p_value=0.001)
        recorded = [publisher.record(result, WINDOW) for result in (stable, shifted)]
        assert publisher.alerts(stable, WINDOW, recorded[0]) == []
        [alert] = publisher.alerts(shifted, WINDOW, recorded[1])
        assert not Webhook.received  # the worker posts it once the close is recorded
        post_webhook(f"http://127.0.0.1:{server.server_port}/hook", slack_payload(alert))
        # The copy on disk the alert links to comes after it (the worker writes it once
        # the alert is out), whole: no partial file is left beside it.
        copy = publisher.save_copy(recorded[1], WINDOW)
    finally:
        server.shutdown()
        server.server_close()
    assert alert is not None
    assert alert.severity == "critical" and "thumbs_down_rate" in alert.drifted_columns
    assert alert.report_url is not None
    report = Path(alert.report_url.removeprefix("file://"))
    assert report == copy.resolve() and report.stat().st_size > 10_000
    assert [p.name for p in report.parent.iterdir()] == [report.name]
    [payload] = Webhook.received
    assert "segment" in str(payload["text"]) and str(alert.report_url) in str(payload["text"])
    workspace = Workspace.create(str(tmp_path / "workspace"))
    [project] = workspace.search_project(PROJECT_NAME)
    assert len(workspace.list_runs(project.id)) == 2


def test_webhook_failure_still_gives_the_alert(tmp_path: Path) -> None:
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w")
    result = detect_drift(
        rows("retail", 400, seed=1), rows("smart_home", 200, seed=3), p_value=0.001
    )
    [alert] = publisher.alerts(result, WINDOW, publisher.record(result, WINDOW))
    assert alert.severity in ("warning", "critical")
    assert not post_webhook("http://127.0.0.1:9/unreachable", slack_payload(alert))  # logged


def test_with_the_ui_an_alert_links_to_its_windows_report_there(tmp_path: Path) -> None:
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w", ui_url="http://ui:8010/")
    result = detect_drift(
        rows("retail", 400, seed=1), rows("smart_home", 200, seed=3), p_value=0.001
    )
    recorded = publisher.record(result, WINDOW)
    [alert] = publisher.alerts(result, WINDOW, recorded)
    project = publisher.project.id
    assert alert.report_url == f"http://ui:8010/projects/{project}/reports/{recorded.snapshot_id}"
    assert [str(r) for r in publisher.workspace.list_runs(project)] == [recorded.snapshot_id]
    publisher.save_copy(recorded, WINDOW)
    assert len(list((tmp_path / "r").glob("drift-*.html"))) == 1  # a copy on disk too


def test_a_worker_killed_mid_write_leaves_no_partial_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot is written beside the workspace and renamed in whole: a worker killed
    mid-write (bench/faults.py did) once left half a JSON file, which the UI and the next
    worker refused to open."""
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w")
    result = detect_drift(rows("retail", 400, seed=1), rows("retail", 200, seed=4), 0.001)
    first = publisher.record(result, WINDOW)

    def cut_short(obj: object, f: IO[str], **kwargs: object) -> None:
        f.write(json.dumps(obj, **kwargs)[:1000])  # type: ignore[arg-type]
        raise KeyboardInterrupt  # the kill, as far as this process can tell

    monkeypatch.setattr("refinery.monitor.workspace.json.dump", cut_short)
    with pytest.raises(KeyboardInterrupt):
        publisher.record(result, WINDOW)
    monkeypatch.undo()
    assert [str(r) for r in publisher.workspace.list_runs(publisher.project.id)] == [
        first.snapshot_id
    ]
    ui = Workspace.create(str(tmp_path / "w"))  # reads every snapshot, as the UI does
    assert [str(r) for r in ui.list_runs(publisher.project.id)] == [first.snapshot_id]
    AlertPublisher(tmp_path / "r", tmp_path / "w").record(result, WINDOW)


def test_only_the_newest_windows_are_kept(tmp_path: Path) -> None:
    """The UI holds every snapshot in memory (2.1 MB a drifted one): one per window, forever,
    would end it within a day of drifted 10-second windows. A worker never reads old ones back."""
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w", kept=2)
    reference = rows("retail", 400, seed=1)
    shifted = detect_drift(reference, rows("smart_home", 200, seed=3), p_value=0.001)
    recorded = []
    for i in range(4):
        window = Window(i, END + timedelta(minutes=i), END + timedelta(minutes=i + 1), 200, "1")
        recorded.append(publisher.record(shifted, window))
        assert publisher.alerts(shifted, window, recorded[-1]) != []
        publisher.save_copy(recorded[-1], window)
    runs = [str(r) for r in publisher.workspace.list_runs(publisher.project.id)]
    assert sorted(runs) == sorted(r.snapshot_id for r in recorded[2:])
    reports = sorted(p.name for p in (tmp_path / "r").glob("drift-*.html"))
    assert reports == ["drift-20261129T120300000000.html", "drift-20261129T120400000000.html"]
    # A file the worker cannot parse is never opened by it (Evidently's Workspace would).
    (tmp_path / "w" / str(publisher.project.id) / "snapshots" / f"{uuid7()}.json").write_text("{")
    AlertPublisher(tmp_path / "r", tmp_path / "w", kept=2).record(shifted, WINDOW)


def test_the_ui_sees_each_window_whole_and_forgets_the_pruned(tmp_path: Path) -> None:
    """Evidently's own watcher (the UI's) over the monitor's folder: a snapshot renamed in from
    beside the workspace arrives as created, whole; a pruned one leaves the UI's memory."""
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w", kept=1)
    state = LocalState.load(str(tmp_path / "w"), None)
    observer = Observer()
    observer.schedule(WorkspaceDirHandler(state), str(tmp_path / "w"), recursive=True)
    observer.start()
    try:
        result = detect_drift(rows("retail", 400, seed=1), rows("retail", 200, seed=4), 0.001)
        project = publisher.project.id
        for _ in range(2):
            recorded = publisher.record(result, WINDOW)
            deadline = time.monotonic() + 10
            want = [recorded.snapshot_id]
            while [str(s) for s in state.snapshots[project]] != want:
                assert time.monotonic() < deadline, (list(state.snapshots[project]), want)
                time.sleep(0.05)
    finally:
        observer.stop()
        observer.join()


def test_an_alert_id_names_its_window() -> None:
    """A window closed again after a crash alerts under the same id; another window not."""
    again = Window(WINDOW.index, WINDOW.start, WINDOW.end, WINDOW.size, "1")
    ids = {kind: WINDOW.alert_id(kind) for kind in ("quality", "operational")}
    assert again.alert_id("quality") == ids["quality"]
    assert Window(4, WINDOW.start, WINDOW.end, 200, "1").alert_id("quality") != ids["quality"]
    assert Window(3, WINDOW.start, WINDOW.end, 200, "2").alert_id("quality") != ids["quality"]
    assert ids["operational"] != ids["quality"]  # one alert per kind of episode


def test_a_partial_snapshot_left_by_a_kill_is_cleared_once_stale(tmp_path: Path) -> None:
    """SIGKILL skips the clean-up; the next worker removes what is old, not what another
    worker is writing now."""
    partial = tmp_path / ".w-partial"
    partial.mkdir()
    (partial / "old.json").write_text("{")
    (partial / "now.json").write_text("{")
    long_ago = time.time() - STALE_PARTIAL_S - 1
    os.utime(partial / "old.json", (long_ago, long_ago))
    AlertPublisher(tmp_path / "r", tmp_path / "w")
    assert [p.name for p in partial.iterdir()] == ["now.json"]


def test_a_window_ops_already_know_of_is_recorded_light_and_its_end_is_an_alert(
    tmp_path: Path,
) -> None:
    """Within a drift episode a drifted window is recorded and alerted on Kafka without a
    notice, widgets or copy; the stable window that ends the episode is a resolved alert."""
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w")
    reference = rows("retail", 400, seed=1)
    shifted = detect_drift(reference, rows("smart_home", 200, seed=3), p_value=0.001)
    stable = detect_drift(reference, rows("retail", 200, seed=4), p_value=0.001)
    began = WINDOW.start - timedelta(minutes=10)
    going_on = replace(WINDOW, decisions={"quality": Decision(None, None, began, "warning")})
    recorded = publisher.record(shifted, going_on)
    [alert] = publisher.alerts(shifted, going_on, recorded)
    assert alert.notice is None and alert.episode_start == began
    assert alert.report_url is None  # no copy is written for it (no UI configured here)
    drawn = [m for m in recorded.snapshot.dict()["metrics"] if "ValueDrift" in m["config"]["type"]]
    assert drawn == [] and not going_on.detailed(True)

    ended = replace(
        WINDOW, index=4, decisions={"quality": Decision("resolved", None, began, "critical")}
    )
    [resolved] = publisher.alerts(stable, ended, publisher.record(stable, ended))
    assert resolved.resolved and resolved.drifted_columns == []
    assert resolved.severity == "critical" and resolved.episode_start == began
    text = str(slack_payload(resolved)["text"])
    assert text.startswith(":white_check_mark: quality drift resolved") and "since" in text
    quiet = replace(WINDOW, decisions={"quality": Decision(None, None, None, "warning")})
    assert publisher.alerts(stable, quiet, recorded) == []


def test_a_window_drifted_in_both_kinds_has_an_alert_for_each(tmp_path: Path) -> None:
    """Each kind's alert carries its own columns, notice and episode: latency that drifts
    on under load does not hide the data's drift opening (nor, later, its end)."""
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w")
    slow = [
        replace(row, latency_ms=row.latency_ms * 10 + 500) for row in rows("smart_home", 200, 3)
    ]
    shifted = detect_drift(rows("retail", 400, seed=1), slow, p_value=0.001)
    assert "latency_ms" in shifted.drifted_columns and "segment" in shifted.drifted_columns
    began = WINDOW.start - timedelta(minutes=30)
    both = replace(
        WINDOW,
        decisions={
            "quality": Decision("opened", None, WINDOW.start, "critical"),
            "operational": Decision(None, None, began, "warning"),
        },
    )
    alerts = publisher.alerts(shifted, both, publisher.record(shifted, both))
    assert [(a.episode_kind, a.notice, a.episode_start) for a in alerts] == [
        ("quality", "opened", WINDOW.start),
        ("operational", None, began),
    ]
    quality, operational = alerts
    assert "latency_ms" not in quality.drifted_columns and "segment" in quality.drifted_columns
    assert operational.drifted_columns == ["latency_ms"] and operational.severity == "warning"
    assert quality.event_id != operational.event_id
    assert str(slack_payload(quality)["text"]).startswith(":warning: *critical* quality drift")
    # Each lists its own kind's tests: the operational one names no data column.
    assert {m.column for m in operational.metrics} == {"latency_ms"}
    assert "latency_ms" not in {m.column for m in quality.metrics}
    assert "segment" not in str(slack_payload(operational)["text"])
