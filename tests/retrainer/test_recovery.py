"""The retrainer rides out an MLflow outage, and a crash right after the alias move
resumes as the promotion it was, never as a challenger gated against itself."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from refinery.common import promotion
from refinery.common.events import TriggerEvent
from refinery.common.kafka import ensure_topics
from refinery.common.registry import CHAMPION, ModelRegistry
from refinery.common.settings import Settings
from refinery.retrainer import pipeline
from refinery.retrainer.gate import GateDecision
from refinery.retrainer.pipeline import Retrainer
from refinery.retrainer.record import OUTCOME_TAG
from refinery.stack.retrainer import retrainer_process
from refinery.stack.stack import Stack
from tests.retrainer.test_service import TASK, feedback_events, send_examples


class _Crash(BaseException):
    """Stands for the process dying: nothing below it runs."""


def _own_model(settings: Settings, tmp_path: Path, name: str) -> Settings:
    """A registered model of its own whose champion is the session's base (same files)."""
    mine = settings.model_copy(
        update={"registered_model": name, "topic_prefix": name, "var_dir": tmp_path}
    )
    base = ModelRegistry(settings).get("1")
    registry = ModelRegistry(mine)
    v1 = registry.register(base.source, base.run_id or "", tags=base.tags)
    registry.set_alias(CHAMPION, v1.version)
    ensure_topics(mine)
    return mine


def test_a_crash_after_the_alias_move_resumes_as_that_promotion(
    bootstrapped: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _own_model(bootstrapped, tmp_path, f"crash-{uuid.uuid4().hex[:6]}")
    send_examples(settings, feedback_events(400, seed=51))
    trigger = TriggerEvent(
        trigger_id=f"crash-{uuid.uuid4().hex[:6]}", reason="t", requested_by="cli"
    )

    def crash(*_: object) -> None:
        raise _Crash

    # The gate's verdict is not what this test is about (a rejected challenger announces
    # too): it passes, and the process dies between the alias move and the event.
    monkeypatch.setattr(pipeline, "gate", lambda *_: GateDecision(True, ["forced for the test"]))
    monkeypatch.setattr(promotion, "announce", crash)
    with pytest.raises(_Crash):
        Retrainer(settings, TASK).run(trigger)
    registry = ModelRegistry(settings)
    champion = registry.champion()
    assert champion is not None and champion.version == "2", "the alias moved before the crash"
    monkeypatch.undo()

    outcome = Retrainer(settings, TASK).run(trigger)
    assert (outcome.status, outcome.version) == ("promoted", "2"), outcome.reasons
    assert registry.get("2").tags["status"] == "champion"
    assert registry.champion().version == "2"  # type: ignore[union-attr]
    assert promotion.last_switch(settings).version == "2"  # type: ignore[union-attr]
    run = Retrainer(settings, TASK).find_run(trigger.trigger_id)
    assert run is not None and run.data.tags[OUTCOME_TAG] == "promoted"


def test_the_retrainer_waits_out_an_mlflow_outage(
    stack: Stack, bootstrapped: Settings, tmp_path: Path
) -> None:
    settings = bootstrapped.model_copy(
        update={"topic_prefix": f"mlflowdown{uuid.uuid4().hex[:6]}", "var_dir": tmp_path}
    )
    ensure_topics(settings)
    worker = retrainer_process(settings, name="retrainer-mlflow-outage")
    stack.down(("mlflow",))
    try:
        worker.spawn()
        deadline = time.monotonic() + 90
        while "MLflow not reachable" not in worker.log_tail(50):
            assert worker.pid() is not None, worker.log_tail(40)
            assert time.monotonic() < deadline, worker.log_tail(40)
            time.sleep(1)
        time.sleep(5)
        assert worker.pid() is not None, worker.log_tail(40)
        stack.up(("mlflow",))
        worker.wait_healthy()  # it connects and reports ready once MLflow is back
    finally:
        stack.up(("mlflow",))
        worker.stop()


def test_kto_runs_through_the_whole_pipeline_with_thumbs_down_as_negatives(
    bootstrapped: Settings, tmp_path: Path
) -> None:
    """Thumbs-down without a correction teach KTO what not to answer; the run is gated and
    recorded like an SFT run."""
    settings = _own_model(bootstrapped, tmp_path, f"kto-{uuid.uuid4().hex[:6]}")
    events = feedback_events(300, seed=53)
    # Half the corrections withheld: those thumbs-down are KTO's undesirable rows.
    events = [
        e.model_copy(update={"correction": None}) if i % 2 else e for i, e in enumerate(events)
    ]
    send_examples(settings, events)
    training = TASK.training.model_copy(update={"method": "kto"})
    task = TASK.model_copy(update={"training": training})
    trigger = TriggerEvent(trigger_id=f"kto-{uuid.uuid4().hex[:6]}", reason="t", requested_by="cli")
    outcome = Retrainer(settings, task).run(trigger)
    assert outcome.status in ("promoted", "rejected") and outcome.version is not None
    run = Retrainer(settings, task).find_run(trigger.trigger_id)
    assert run is not None and run.data.params["method"] == "kto"
    assert run.data.tags[OUTCOME_TAG] == outcome.status
    assert "best_eval_loss" in run.data.metrics
    undesirable = sum(e.rating == "down" and not e.correction for e in events)
    assert undesirable > 50
