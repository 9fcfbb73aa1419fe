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
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from services.common.events import (
    AlertEvent,
    ModelEvent,
    TriggerEvent,
)
from services.common.kafka import EventConsumer, EventProducer, ensure_topics
from services.common.promotion import promote, reject
from services.common.registry import ModelRegistry
from services.common.settings import Settings
from services.common.task import load_task
from services.common.topics import Stream
from services.demo.traffic_events import synthetic_traffic
from services.monitor.drift import THUMBS_DOWN
from services.stack.monitor import monitor_process
from services.stack.process import ManagedProcess
from tests.conftest import TEST_TASK
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
        }
    )
    ensure_topics(settings)
    worker = monitor_process(settings, "drift-monitor")
    worker.start()
    yield settings, worker
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
    report = Path(alerts[0].report_url.removeprefix("file://"))  # type: ignore[union-attr]
    assert report.is_file() and report.stat().st_size > 10_000
    assert len(Webhook.received) == 2 and "prompt_oov_share" in str(Webhook.received[0]["text"])

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
