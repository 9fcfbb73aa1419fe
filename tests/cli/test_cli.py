"""The ``refinery`` CLI and ``.ci/run``, run as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refinery.cli import overview
from refinery.common import decisions
from refinery.common.events import AlertEvent, DriftMetric, TriggerEvent
from refinery.common.kafka import EventProducer, ensure_topics
from refinery.common.settings import REPO_ROOT, Settings
from refinery.common.topics import Stream
from refinery.stack.stack import Stack
from tests.conftest import API_KEYS, run_cli, settings_env
from tests.inference.helpers import read_events
from tests.ports import CLI, ports

# The key the CLI calls the gateway with (else the local admin key file, absent here).
KEY = {scope: {"REFINERY_CLIENT_API_KEY": key} for scope, key in API_KEYS.items()}


def test_up_status_down_lifecycle(stack_settings: Settings, tmp_path: Path) -> None:
    mine = stack_settings.model_copy(update={"var_dir": tmp_path / "var", **ports(CLI)})
    try:
        up = run_cli(mine, "up", "kafka")
        assert up.returncode == 0, up.stderr[-3000:]
        assert "kafka    healthy" in up.stdout
        assert (tmp_path / "var" / "run" / "kafka.pid").exists()

        status = run_cli(mine, "status")
        assert status.returncode == 1  # mlflow and vllm are not running: not all healthy
        assert "kafka    healthy" in status.stdout
        assert "mlflow   stopped" in status.stdout
        assert "consumer lag" in status.stdout

        bad = run_cli(mine, "up", "kafak")
        assert bad.returncode == 2 and "unknown component" in bad.stderr
    finally:
        down = run_cli(mine, "down")
    assert down.returncode == 0, down.stderr[-2000:]
    assert "kafka" in down.stdout
    assert not (tmp_path / "var" / "run" / "kafka.pid").exists()
    assert "nothing was running" in run_cli(mine, "down").stdout


def test_status_reports_the_champion(full_stack: Settings) -> None:
    status = run_cli(full_stack, "status")
    assert status.returncode == 0, status.stdout + status.stderr[-2000:]
    for name in ("kafka", "mlflow", "vllm", "gateway", "monitor", "evidently"):
        assert f"{name:<8} healthy" in status.stdout
    assert f"champion: {full_stack.registered_model} v1 (base)" in status.stdout
    # The loop besides the processes: each part answers, or says it cannot.
    lines = {line.split(":", 1)[0]: line for line in status.stdout.splitlines() if ": " in line}
    assert re.match(r"models: champion v1 \(base, golden \d\.\d{3}\)", lines["models"])
    for part in ("last drift window", "alerts", "last retraining", "last decision"):
        assert part in lines and "unavailable" not in lines[part], lines.get(part)


def test_try_sends_one_request_through_vllm(full_stack: Settings) -> None:
    done = run_cli(full_stack, "try", "I was charged twice, refund me")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "completion:" in done.stdout and "label:" in done.stdout


def test_ask_gets_an_answer_and_records_the_thumbs(full_stack: Settings) -> None:
    args = ("ask", "where is my parcel", "--rating", "down", "--correction", " shipping")
    done = run_cli(full_stack, *args, env={"REFINERY_CLIENT_API_KEY": API_KEYS["feedback"]})
    assert done.returncode != 0 and "inference" in done.stderr  # a feedback-only key cannot ask
    done = run_cli(full_stack, *args, env={"REFINERY_CLIENT_API_KEY": API_KEYS["admin"]})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "answer:" in done.stdout and "thumbs-down recorded" in done.stdout


@pytest.fixture
def clitest_gateway(full_stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A gateway of its own on topics of their own: a trigger on the session's topics would
    start a real retraining."""
    mine = full_stack.model_copy(
        update={
            "topic_prefix": "clitest",
            "var_dir": tmp_path / "var",
            "gateway_port": full_stack.gateway_port + 2,
        }
    )
    ensure_topics(mine)
    stack = Stack(mine)
    stack.up(("gateway",))
    yield mine
    stack.down(("gateway",))


def test_retrain_sends_a_trigger_through_the_gateway(clitest_gateway: Settings) -> None:
    args = ("retrain", "--reason", "new product line", "--trigger-id", "t-cli-1")
    refused = run_cli(clitest_gateway, *args, env=KEY["feedback"])
    assert refused.returncode != 0 and "'admin' scope" in refused.stderr
    done = run_cli(clitest_gateway, *args, env=KEY["admin"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trigger t-cli-1 sent (clitest." in done.stdout
    [trigger] = read_events(clitest_gateway, Stream.TRIGGERS, {"t-cli-1"}, "trigger_id")
    assert isinstance(trigger, TriggerEvent)
    assert trigger.reason == "new product line" and trigger.requested_by == "cli"


def test_ops_commands_need_an_admin_key(full_stack: Settings) -> None:
    keyless = run_cli(full_stack, "rollback", env={"REFINERY_CLIENT_API_KEY": ""})
    assert keyless.returncode != 0 and "no API key" in keyless.stderr
    refused = run_cli(full_stack, "promote", "1", env=KEY["inference"])
    assert refused.returncode != 0
    assert "the gateway said 403: this API key lacks the 'admin' scope" in refused.stderr
    missing = run_cli(full_stack, "promote", "999", env=KEY["admin"])
    assert missing.returncode != 0 and "404" in missing.stderr and "'999'" in missing.stderr


def test_alerts_prints_drift_alerts(kafka_stack: Settings) -> None:
    kafka_stack = kafka_stack.model_copy(update={"topic_prefix": "clitest"})
    ensure_topics(kafka_stack)
    now = datetime.now(UTC)
    alert = AlertEvent(
        window_start=now,
        window_end=now,
        window_size=200,
        drifted_columns=["prompt_length"],
        metrics=[
            DriftMetric(
                column="prompt_length", method="ks", score=0.0001, threshold=0.05, drifted=True
            )
        ],
        reference_version="1",
        report_url="file:///tmp/report.html",
        episode_start=now,
        notice="opened",
    )
    slow = alert.model_copy(
        update={
            "event_id": str(uuid.uuid4()),
            "drifted_columns": ["latency_ms"],
            "episode_kind": "operational",
            "notice": None,
        }
    )
    resolved = alert.model_copy(
        update={"event_id": str(uuid.uuid4()), "drifted_columns": [], "notice": "resolved"}
    )
    with EventProducer(kafka_stack) as producer:
        for event in (alert, slow, resolved):
            producer.send_and_wait(Stream.ALERTS, event)
    shown = run_cli(kafka_stack, "alerts")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "WARNING quality drift in prompt_length" in shown.stdout
    assert "ks 0.0001" in shown.stdout and "[ops notified: opened]" in shown.stdout
    assert "WARNING operational drift in latency_ms" in shown.stdout
    assert f"RESOLVED quality drift episode since {now:%Y-%m-%d %H:%M:%S}" in shown.stdout


def test_status_shows_each_kind_of_episode_when_another_alerted_last(
    kafka_stack: Settings,
) -> None:
    """A quality episode still open under a newer operational alert: status shows both."""
    settings = kafka_stack.model_copy(update={"topic_prefix": "clistatus"})
    ensure_topics(settings)
    now = datetime.now(UTC)
    quality = AlertEvent(
        window_start=now,
        window_end=now,
        window_size=200,
        drifted_columns=["segment"],
        metrics=[
            DriftMetric(column="segment", method="chi2", score=1e-9, threshold=1e-3, drifted=True)
        ],
        reference_version="2",
        severity="critical",
        episode_start=now,
        notice="escalated",
    )
    slow = quality.model_copy(
        update={
            "event_id": str(uuid.uuid4()),
            "occurred_at": datetime.now(UTC),
            "drifted_columns": ["latency_ms"],
            "episode_kind": "operational",
            "severity": "warning",
            "notice": "opened",
        }
    )
    with EventProducer(settings) as producer:
        for event in (quality, slow):
            producer.send_and_wait(Stream.ALERTS, event)
    said = overview._alerts(settings)
    assert said.startswith("quality critical ") and "drift in segment (reference v2)" in said
    assert "; operational warning " in said and "drift in latency_ms" in said


def test_alerts_follow_prints_decisions_as_they_come(kafka_stack: Settings) -> None:
    settings = kafka_stack.model_copy(update={"topic_prefix": "clifollow"})
    ensure_topics(settings)
    with subprocess.Popen(
        [sys.executable, "-m", "refinery.cli", "alerts", "--follow"],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as follow:
        guard = threading.Timer(60, follow.terminate)  # a line that never comes fails, not hangs
        guard.start()
        try:
            time.sleep(3)  # it subscribes; what comes later must still show
            told = decisions.decision(
                "rejected",
                "refinery-model",
                "v7 rejected; champion v6 keeps serving",
                version="7",
                run_url="http://mlflow/#/experiments/1/runs/abc",
                reasons=["golden accuracy 0.80 < 0.95 - 0.02"],
            )
            assert decisions.tell(settings, told)
            assert follow.stdout is not None
            shown = [follow.stdout.readline() for _ in range(3)]
        finally:
            guard.cancel()
            follow.terminate()
    assert "WARNING rejected: refinery-model v7 rejected; champion v6 keeps serving" in shown[0]
    assert shown[1].strip() == "golden accuracy 0.80 < 0.95 - 0.02"
    assert shown[2].strip() == "run: http://mlflow/#/experiments/1/runs/abc"


def _ci_run(test_body: str, tmp_path: Path, slow: bool = False) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    marker = "import pytest\n@pytest.mark.slow\n" if slow else ""
    probe.write_text(f"{marker}def test_probe():\n    {test_body}\n")
    env = {**os.environ, "PYTEST_ARGS": str(probe)}
    # As CI runs it: not under this make's command-line variables (`make test
    # PYTEST_ARGS=...` passes them down in MAKEFLAGS, over the probe's).
    for name in ("PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    return subprocess.run(
        ["bash", str(REPO_ROOT / ".ci" / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_ci_run_fails_when_tests_fail(tmp_path: Path) -> None:
    failed = _ci_run("assert 1 == 2", tmp_path)
    assert failed.returncode != 0
    assert "1 failed" in failed.stdout
    passed = _ci_run("assert 1 == 1", tmp_path)
    assert passed.returncode == 0, passed.stdout[-2000:] + passed.stderr[-2000:]
    assert "1 passed" in passed.stdout
    # The slow suite (make test-slow) is part of CI too.
    slow = _ci_run("assert 1 == 2", tmp_path, slow=True)
    assert slow.returncode != 0 and "1 failed" in slow.stdout
