"""Alerts: report saved, workspace run recorded, Slack-compatible webhook received."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

from evidently.ui.workspace import Workspace

from refinery.monitor.alerts import PROJECT_NAME, AlertPublisher, Window
from refinery.monitor.drift import ThumbsCount, detect_drift
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
        publisher = AlertPublisher(
            tmp_path / "reports",
            tmp_path / "workspace",
            f"http://127.0.0.1:{server.server_port}/hook",
        )
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
        assert publisher.alert(stable, WINDOW, recorded[0]) is None
        alert = publisher.alert(shifted, WINDOW, recorded[1])
        assert alert is not None and not Webhook.received  # posted once the close is recorded
        publisher.notify(alert)
    finally:
        server.shutdown()
        server.server_close()
    assert alert is not None
    assert alert.severity == "critical" and "thumbs_down_rate" in alert.drifted_columns
    assert alert.report_url is not None
    report = Path(alert.report_url.removeprefix("file://"))
    assert report.exists() and report.stat().st_size > 10_000
    [payload] = Webhook.received
    assert "segment" in str(payload["text"]) and str(alert.report_url) in str(payload["text"])
    workspace = Workspace.create(str(tmp_path / "workspace"))
    [project] = workspace.search_project(PROJECT_NAME)
    assert len(workspace.list_runs(project.id)) == 2


def test_webhook_failure_still_gives_the_alert(tmp_path: Path) -> None:
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w", "http://127.0.0.1:9/unreachable")
    result = detect_drift(
        rows("retail", 400, seed=1), rows("smart_home", 200, seed=3), p_value=0.001
    )
    alert = publisher.alert(result, WINDOW, publisher.record(result, WINDOW))
    assert alert is not None and alert.severity in ("warning", "critical")
    publisher.notify(alert)  # logged, not raised


def test_with_the_ui_an_alert_links_to_its_windows_report_there(tmp_path: Path) -> None:
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w", None, ui_url="http://ui:8010/")
    result = detect_drift(
        rows("retail", 400, seed=1), rows("smart_home", 200, seed=3), p_value=0.001
    )
    recorded = publisher.record(result, WINDOW)
    alert = publisher.alert(result, WINDOW, recorded)
    assert alert is not None
    project = publisher.project.id
    assert alert.report_url == f"http://ui:8010/projects/{project}/reports/{recorded.snapshot_id}"
    assert [str(r) for r in publisher.workspace.list_runs(project)] == [recorded.snapshot_id]
    assert len(list((tmp_path / "r").glob("drift-*.html"))) == 1  # a copy on disk too


def test_a_snapshot_cut_short_by_a_kill_does_not_stop_the_next_worker(tmp_path: Path) -> None:
    """A worker SIGKILLed while Evidently wrote a snapshot left half a JSON file; the next
    worker could not open the workspace and crashed on every restart (bench/faults.py)."""
    publisher = AlertPublisher(tmp_path / "r", tmp_path / "w", None)
    result = detect_drift(rows("retail", 400, seed=1), rows("retail", 200, seed=4), 0.001)
    publisher.record(result, WINDOW)
    publisher.record(result, WINDOW)
    [first, second] = sorted((tmp_path / "w").glob("*/snapshots/*.json"))
    second.write_text(second.read_text()[: second.stat().st_size // 2])

    again = AlertPublisher(tmp_path / "r", tmp_path / "w", None)
    runs = again.workspace.list_runs(again.project.id)
    assert [str(r) for r in runs] == [first.stem]
    assert [p.name for p in (tmp_path / "unreadable-snapshots").glob("*/*.json")] == [second.name]
    again.record(result, WINDOW)  # and it goes on recording


def test_an_alert_id_names_its_window() -> None:
    """A window closed again after a crash alerts under the same id; another window not."""
    again = Window(WINDOW.index, WINDOW.start, WINDOW.end, WINDOW.size, "1")
    assert again.alert_id == WINDOW.alert_id
    assert Window(4, WINDOW.start, WINDOW.end, 200, "1").alert_id != WINDOW.alert_id
    assert Window(3, WINDOW.start, WINDOW.end, 200, "2").alert_id != WINDOW.alert_id
