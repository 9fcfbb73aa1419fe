"""Drift windows, alerts, triggers and the decisions webhook through a real faust worker on
the real broker.

The worker runs under its own topic prefix and app id, so the other tests' traffic does
not reach its windows; the phases wait on its log so each window holds what the test
meant it to hold.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import HTTPServer

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from refinery.common.events import (
    AlertEvent,
    ModelEvent,
    TriggerEvent,
)
from refinery.common.kafka import EventConsumer, EventProducer, ensure_topics
from refinery.common.promotion import promote, reject
from refinery.common.registry import ModelRegistry
from refinery.common.settings import REPO_ROOT, Settings
from refinery.common.task import load_task
from refinery.common.topics import Stream
from refinery.demo.traffic_events import synthetic_traffic
from refinery.monitor.drift import THUMBS_DOWN
from refinery.stack.evidently_ui import evidently_ui_process
from refinery.stack.monitor import monitor_process
from refinery.stack.process import ManagedProcess
from tests.browser import render
from tests.conftest import TEST_TASK
from tests.metrics import promtool_lint, scrape_until, value
from tests.monitor.test_alerts import Webhook

WINDOW, REFERENCE = 100, 200
TASK = load_task(TEST_TASK).task
WINDOW_LINE = re.compile(r"drift window (\d+) v(\S+): (\d+) predictions, .* drifted=(\S+),")


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def drift_worker(
    kafka_stack: Settings, webhook: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, ManagedProcess]]:
    var = tmp_path_factory.mktemp("drift-var")
    task = yaml.safe_load(TEST_TASK.read_text())
    task["drift"] = {
        "window_size": WINDOW,
        "reference_size": REFERENCE,
        "p_value": 0.001,
        "thumbs_down_p_value": 0.001,
        "persist_windows": 2,
        "min_examples": 50,
        "min_new_labels": 20,
    }
    (var / "task.yaml").write_text(yaml.safe_dump(task))
    settings = kafka_stack.model_copy(
        update={
            "var_dir": var,
            "task_file": var / "task.yaml",
            "topic_prefix": "drifttest",
            "monitor_app_id": "drifttest-monitor",
            "alert_webhook_url": webhook,
            # Ports of its own: the session's monitor and UI may hold the session's.
            "monitor_metrics_port": kafka_stack.monitor_metrics_port + 5,
            "evidently_ui_port": kafka_stack.evidently_ui_port + 5,
        }
    )
    ensure_topics(settings)
    worker = monitor_process(settings, "drift-monitor")
    ui = evidently_ui_process(settings)  # over the worker's workspace
    worker.start()
    ui.start()
    yield settings, worker
    ui.stop()
    worker.stop()


def send(
    settings: Settings, version: str, n: int, *, domain: str, down_rate: float, seed: int
) -> None:
    with EventProducer(settings) as producer:
        for p, fb in synthetic_traffic(
            TASK, version, n, domain=domain, down_rate=down_rate, seed=seed
        ):
            producer.send(Stream.PREDICTIONS, p, key=p.prediction_id)
            if fb is not None:
                producer.send(Stream.FEEDBACK, fb, key=fb.prediction_id)
        producer.flush()


def windows_logged(worker: ManagedProcess, version: str, count: int) -> list[list[str]]:
    """Wait until ``count`` windows of ``version`` closed; their drifted columns, in order."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [
            m.group(4).split(",") if m.group(4) != "-" else []
            for m in WINDOW_LINE.finditer(worker.log_file.read_text(errors="replace"))
            if m.group(2) == version
        ]
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{count} windows of v{version} not closed; log:\n{worker.log_tail(40)}")


def wait_for_line(worker: ManagedProcess, text: str) -> None:
    deadline = time.monotonic() + 60
    while text not in worker.log_file.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in:\n{worker.log_tail(40)}"
        time.sleep(0.5)


def read_all(settings: Settings, stream: Stream) -> list[object]:
    with EventConsumer(settings, [stream], group_id=f"test-{uuid.uuid4()}") as consumer:
        events, idle = [], 0
        while idle < 4:
            batch = consumer.poll(timeout_ms=500)
            idle = 0 if batch else idle + 1
            events += [item.event for item in batch]
    return events


def test_shift_alerts_within_a_window_stable_traffic_does_not_and_drift_triggers(
    drift_worker: tuple[Settings, ManagedProcess],
) -> None:
    settings, worker = drift_worker
    Webhook.received.clear()
    stable_windows = 8
    send(
        settings, "1", REFERENCE + stable_windows * WINDOW, domain="retail", down_rate=0.1, seed=21
    )
    stable = windows_logged(worker, "1", stable_windows)
    # Onset: the new product line, from here on.
    send(settings, "1", 2 * WINDOW, domain="smart_home", down_rate=0.6, seed=22)
    after = windows_logged(worker, "1", stable_windows + 2)[stable_windows:]
    false_alarms = sum(bool(cols) for cols in stable)
    print(f"v1: {false_alarms} false alarms in {stable_windows} stable windows; after: {after}")
    assert false_alarms == 0, stable
    assert {"prompt_oov_share", "segment"} <= set(after[0])  # the first window after onset

    alerts = [a for a in read_all(settings, Stream.ALERTS) if isinstance(a, AlertEvent)]
    assert len(alerts) == 2
    assert all(a.reference_version == "1" and a.window_size == WINDOW for a in alerts)
    # The synthetic traffic's latency is steady: no operational episode, one of quality.
    assert all(a.episode_kind == "quality" for a in alerts)
    # One drift episode: ops hear of its first window, and of the second only if it grew.
    first, second = alerts
    grew = set(after[1]) - set(after[0]) or (first.severity, second.severity) == (
        "warning",
        "critical",
    )
    assert first.notice == "opened" and second.notice == ("escalated" if grew else None)
    assert first.episode_start == second.episode_start == first.window_start
    notified = [a for a in alerts if a.notice]
    # Each links to its window's report in the Evidently UI; a notifying one has a copy.
    project = f"{settings.evidently_ui_url}/projects/"
    assert all(str(a.report_url).startswith(project) for a in alerts), alerts[0].report_url
    # The copies follow the alerts (the worker renders them once the alerts are out).
    reports, deadline = settings.var_dir / "monitor" / "reports", time.monotonic() + 60
    while len(copies := list(reports.glob("drift-*.html"))) < len(notified):
        assert time.monotonic() < deadline, copies
        time.sleep(0.5)
    assert len(copies) == len(notified) and all(c.stat().st_size > 10_000 for c in copies)
    assert len(Webhook.received) == len(notified)
    assert "prompt_oov_share" in str(Webhook.received[0]["text"])

    # Two drifted windows in a row with enough ratings since training: one trigger.
    triggers = [t for t in read_all(settings, Stream.TRIGGERS) if isinstance(t, TriggerEvent)]
    assert len(triggers) == 1
    trigger = triggers[0]
    assert trigger.requested_by == "monitor" and trigger.trigger_id.startswith("drift-v1-")
    assert trigger.evidence["drifted_windows"] == 2
    assert trigger.evidence["examples_since_training"] >= 50

    # A promotion gives a new reference; then only the thumbs-down rate rises.
    with EventProducer(settings) as producer:
        promoted = ModelEvent(
            model="refinery-model",
            version="2",
            action="promoted",
            served_name="refinery-model-v2",
            artifact_uri="file:///nowhere",
            kind="lora",
        )
        producer.send_and_wait(Stream.MODELS, promoted, key="refinery-model")
    wait_for_line(worker, "windows: reference reset to v2")
    send(settings, "2", REFERENCE + 2 * WINDOW, domain="retail", down_rate=0.1, seed=31)
    stable_v2 = windows_logged(worker, "2", 2)
    send(settings, "2", WINDOW, domain="retail", down_rate=0.5, seed=32)
    thumbs = windows_logged(worker, "2", 3)[2]
    print(f"v2: stable windows {stable_v2}; thumbs-down window {thumbs}")
    assert stable_v2 == [[], []]
    assert thumbs == [THUMBS_DOWN]
    # The new champion's second stable window ended the episode; the thumbs opened another.
    deadline = time.monotonic() + 30
    while len(Webhook.received) < len(notified) + 2:
        assert time.monotonic() < deadline, Webhook.received
        time.sleep(0.5)
    everything = [a for a in read_all(settings, Stream.ALERTS) if isinstance(a, AlertEvent)]
    v2 = sorted(everything, key=lambda a: a.window_end)[2:]  # keyed by version: 2 partitions
    assert [(a.reference_version, a.notice) for a in v2] == [("2", "resolved"), ("2", "opened")]
    assert v2[0].episode_start == first.window_start and v2[0].drifted_columns == []
    assert v2[1].severity == "critical" and v2[1].episode_start == v2[1].window_start
    resolved_text, opened_text = (str(m["text"]) for m in Webhook.received[-2:])
    assert resolved_text.startswith(":white_check_mark: quality drift resolved")
    assert "*critical* quality drift in thumbs_down_rate" in opened_text


def test_the_dashboard_plots_the_windows_and_the_drifted_ones_are_tagged(
    drift_worker: tuple[Settings, ManagedProcess],
) -> None:
    """After the shift test, in the Evidently UI: through its HTTP API, then in Chromium."""
    settings, _ = drift_worker
    ui = settings.evidently_ui_url
    [project] = httpx.get(f"{ui}/api/projects").json()
    snapshots = httpx.get(f"{ui}/api/projects/{project['id']}/snapshots").json()
    drifted = [s for s in snapshots if "drifted" in s["tags"]]
    stable = [s for s in snapshots if "stable" in s["tags"]]
    assert len(drifted) >= 3 and len(stable) >= 8, [s["tags"] for s in snapshots]
    for s in drifted:
        assert any(t.startswith("episode-") for t in s["tags"]) and s["metadata"]["window_end"]
        assert s["metadata"]["drifted_columns"] != "-"
    assert {s["metadata"]["model_version"] for s in snapshots} >= {"1", "2"}
    # An alert's link is a snapshot the UI has, tagged drifted; a resolved one's, stable.
    alerts = [a for a in read_all(settings, Stream.ALERTS) if isinstance(a, AlertEvent)]
    assert [a.resolved for a in alerts].count(True) == 1
    for alert in alerts:
        linked = str(alert.report_url).rsplit("/", 1)[-1]
        meta = httpx.get(f"{ui}/api/projects/{project['id']}/{linked}/metadata")
        tag = "stable" if alert.resolved else "drifted"
        assert meta.status_code == 200 and tag in meta.json()["tags"], alert

    panels = httpx.get(f"{ui}/api/v2/dashboards/{project['id']}").json()["panels"]
    titles = [p["title"] for p in panels]
    assert {"Drift share per window", "p-value per feature", "Thumbs-down rate"} <= set(titles)
    share = next(p for p in panels if p["title"] == "Drift share per window")["values"][0]
    data = httpx.post(
        f"{ui}/api/v2/snapshots/{project['id']}/data_series_batch",
        json={
            "series_filter": [
                {k: share[k] for k in ("tags", "metadata", "metric", "metric_labels")}
            ]
        },
    ).json()
    values = data["series"][0]["values"]
    assert len(values) == len(snapshots) and max(values) > 0 and min(values) == 0

    shot = REPO_ROOT / "var" / "screenshots" / "evidently-dashboard.png"
    drawn = render(
        f"{ui}/projects/{project['id']}",
        "document.body.innerText.includes('Drift share per window')"
        " && document.querySelectorAll('svg circle').length",
        shot,
    )
    assert drawn and drawn > len(snapshots), f"no chart points drawn (see {shot})"
    listed = render(
        f"{ui}/projects/{project['id']}/reports",
        "(document.body.innerText.match(/drifted/g) || []).length",
        REPO_ROOT / "var" / "screenshots" / "evidently-reports.png",
    )
    assert listed and listed >= len(drifted)


def test_the_worker_exports_what_it_read_tested_and_sent(
    drift_worker: tuple[Settings, ManagedProcess],
) -> None:
    """After the shift test: its events, windows, scores, alerts and trigger as metrics."""
    settings, _ = drift_worker
    url = f"http://127.0.0.1:{settings.monitor_metrics_port}/metrics"
    # The lag is measured every 30 s: the first measurement may not have come yet.
    text, samples = scrape_until(
        url, lambda s: any(name == "refinery_monitor_consumer_lag" for name, _ in s)
    )
    read = value(samples, "refinery_monitor_events_total", stream="predictions", outcome="read")
    assert read is not None and read >= REFERENCE + 10 * WINDOW
    assert (value(samples, "refinery_monitor_examples_total") or 0) > 0
    drifted = value(samples, "refinery_monitor_windows_total", drifted="true")
    assert drifted is not None and drifted >= 2
    assert value(samples, "refinery_monitor_triggers_total", kind="drift") == 1
    # An alert per drifted window (two of v1, the thumbs window of v2), not the resolved one.
    quality = {"episode_kind": "quality"}
    assert (value(samples, "refinery_monitor_alerts_total", severity="warning", **quality) or 0) + (
        value(samples, "refinery_monitor_alerts_total", severity="critical", **quality) or 0
    ) == 3
    assert value(samples, "refinery_monitor_alert_notices_total", notice="opened", **quality) == 2
    assert value(samples, "refinery_monitor_alert_notices_total", notice="resolved", **quality) == 1
    score = value(
        samples,
        "refinery_monitor_drift_score",
        column="thumbs_down_rate",
        method="two_proportion_z",
    )
    assert score is not None and 0 <= score <= 1
    assert value(samples, "refinery_monitor_window_predictions") == WINDOW
    assert (value(samples, "refinery_monitor_join_keys") or 0) > 0
    lag = [v for (name, _), v in samples.items() if name == "refinery_monitor_consumer_lag"]
    assert lag and all(v >= 0 for v in lag)
    assert promtool_lint(text) == ""


def test_decisions_reach_the_webhook_with_links_to_their_runs(
    drift_worker: tuple[Settings, ManagedProcess], mlflow_stack: Settings
) -> None:
    """A promotion and a rejection through the one promotion path: the worker posts both,
    each with the MLflow run that made the version."""
    settings, worker = drift_worker
    settings = settings.model_copy(update={"registered_model": "decisiontest-model"})
    Webhook.received.clear()
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    found = client.get_experiment_by_name("decisiontest")
    experiment = found.experiment_id if found else client.create_experiment("decisiontest")
    runs = [client.create_run(experiment) for _ in range(2)]
    registry = ModelRegistry(settings)
    base, challenger = (
        registry.register(f"{run.info.artifact_uri}/model", run.info.run_id, tags=tags)
        for run, tags in zip(
            runs, [{"kind": "base"}, {"kind": "lora", "base_version": "1"}], strict=True
        )
    )
    promote(settings, base.version)
    reject(settings, challenger, {"recent_accuracy": 0.4}, ["recent accuracy 0.40 < 0.90"])
    deadline = time.monotonic() + 60
    while len(Webhook.received) < 2:
        assert time.monotonic() < deadline, worker.log_tail(30)
        time.sleep(0.5)
    promoted, rejected = (str(message["text"]) for message in Webhook.received)
    link = f"{settings.mlflow_uri}/#/experiments/{experiment}/runs/"
    assert f"promoted: decisiontest-model v{base.version} promoted" in promoted
    assert link + runs[0].info.run_id in promoted
    assert f"rejected: decisiontest-model v{challenger.version} rejected" in rejected
    assert "recent accuracy 0.40 < 0.90" in rejected and link + runs[1].info.run_id in rejected
