"""The retrainer as a process on the real stack: a trigger becomes a promoted LoRA version
that the gateway serves; a kill mid-training resumes and promotes once; a repeated trigger
trains nothing; a worse challenger is rejected; ops are told of each decision."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from transformers import AutoTokenizer

from refinery.common.events import DecisionEvent, ExampleEvent, ModelEvent, TriggerEvent
from refinery.common.kafka import EventProducer, ensure_topics
from refinery.common.registry import ModelRegistry
from refinery.common.settings import Settings
from refinery.common.task import SearchSpec, load_task
from refinery.common.topics import Stream
from refinery.demo.corpus import generate
from refinery.retrainer.pipeline import Retrainer, _safe
from refinery.retrainer.record import OUTCOME_TAG
from refinery.retrainer.splits import split
from refinery.stack.stack import Stack
from tests.conftest import API_KEYS, TEST_TASK, run_cli
from tests.inference.helpers import read_events, serve_the_base_again
from tests.metrics import promtool_lint, scrape, scrape_until, value

TASK = load_task(TEST_TASK)
# Ops commands go through the gateway's admin API with this key.
ADMIN = {"REFINERY_CLIENT_API_KEY": API_KEYS["admin"]}


def feedback_events(n: int, seed: int, shuffle_labels: bool = False) -> list[ExampleEvent]:
    """Ratings of a champion that mostly gets the new product line wrong, with corrections."""
    rng = random.Random(seed)
    # Just before now: newer than any rated traffic earlier tests sent, which the recent
    # test split (the newest ratings) would otherwise be drawn from.
    t0 = datetime.now(UTC) - timedelta(seconds=n + 5)
    out = []
    for i, ex in enumerate(generate(TASK.task, n, seed=seed, domain="smart_home")):
        right = rng.random() < 0.25
        truth = rng.choice(TASK.task.labels) if shuffle_labels else ex.completion.strip()
        out.append(
            ExampleEvent(
                feedback_id=f"fb-{uuid.uuid4()}",
                prediction_id=str(uuid.uuid4()),
                prompt=ex.prompt,
                completion=ex.completion if right else " technical",
                model_version="1",
                segment="smart_home",
                rating="up" if right else "down",
                correction=None if right else f" {truth}",
                predicted_at=t0 + timedelta(seconds=i),
                rated_at=t0 + timedelta(seconds=i + 1),
            )
        )
    return out


def send_examples(settings: Settings, events: list[ExampleEvent]) -> None:
    with EventProducer(settings) as producer:
        for e in events:
            producer.send(Stream.EXAMPLES, e, key=e.feedback_id)
        producer.flush()


def wait_for_outcome(settings: Settings, trigger_id: str, timeout_s: float = 420) -> str:
    retrainer = Retrainer(settings, TASK)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = retrainer.find_run(trigger_id)
        if run is not None and OUTCOME_TAG in run.data.tags:
            return str(run.info.run_id)
        time.sleep(2)
    raise AssertionError(f"no outcome for {trigger_id} in {timeout_s}s")


def versions_for(settings: Settings, trigger_id: str) -> list[str]:
    registry = ModelRegistry(settings)
    found = registry.client.search_model_versions(f"name = '{registry.name}'")
    return [mv.version for mv in found if (mv.tags or {}).get("trigger_id") == trigger_id]


@pytest.fixture(scope="module")
def retrainer_up(stack: Stack, full_stack: Settings) -> Iterator[Settings]:
    running = stack._started["retrainer"]  # since full_stack, through the Kafka outage tests
    assert running.pid() is not None, f"the retrainer died:\n{running.log_tail(30)}"
    send_examples(full_stack, feedback_events(500, seed=41))
    stack.up(("retrainer",))
    yield full_stack
    serve_the_base_again(full_stack, "retrainer tests done: the base serves again")


def test_killed_mid_training_resumes_promotes_once_and_the_gateway_serves_it(
    stack: Stack, retrainer_up: Settings
) -> None:
    settings = retrainer_up
    trigger_id = f"test-resume-{uuid.uuid4().hex[:6]}"
    worker = stack._started["retrainer"]
    sent = run_cli(
        settings, "retrain", "--reason", "new product line", "--trigger-id", trigger_id, env=ADMIN
    )
    assert sent.returncode == 0, sent.stderr
    checkpoints = settings.var_dir / "retrainer" / _safe(trigger_id) / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("checkpoint-*")):
        assert time.monotonic() < deadline, worker.log_tail(40)
        time.sleep(0.2)
    worker.kill()
    stack.up(("retrainer",))
    run_id = wait_for_outcome(settings, trigger_id)

    log = worker.log_file.read_text(errors="replace")
    assert f"trigger {trigger_id}: resuming run {run_id}" in log
    assert "resuming from" in log[log.rfind("--- ") :]
    assert len(versions_for(settings, trigger_id)) == 1
    version = versions_for(settings, trigger_id)[0]
    registry = ModelRegistry(settings)
    champion = registry.champion()
    assert champion is not None and champion.version == version

    client = MlflowClient(settings.mlflow_uri)
    run = client.get_run(run_id)
    assert run.data.tags[OUTCOME_TAG] == "promoted"
    assert int(run.data.params["train_examples"]) > 0
    metrics = run.data.metrics
    assert metrics["recent_challenger_accuracy"] > metrics["recent_champion_accuracy"] + 0.2
    assert metrics["pool_clean_input"] > 0 and "best_eval_loss" in metrics
    artifacts = {
        a.path for d in ("adapter", "data", "evaluation") for a in client.list_artifacts(run_id, d)
    }
    assert {
        "adapter/adapter_config.json",
        "data/snapshot.json",
        "evaluation/report.md",
    } <= artifacts
    assert run.inputs.dataset_inputs, "the training data is logged as the run's dataset"

    promoted = [
        e
        for e in read_events(settings, Stream.MODELS, {version}, "version", timeout_s=20)
        if isinstance(e, ModelEvent) and e.action == "promoted"
    ]
    assert len(promoted) == 1
    served = f"{registry.name}-v{version}"
    deadline = time.monotonic() + 90
    with httpx.Client(timeout=30) as http:
        while True:
            r = http.post(
                f"{settings.gateway_url}/v1/completions",
                headers={"Authorization": f"Bearer {API_KEYS['inference']}"},
                json={
                    "model": registry.name,
                    "prompt": "Ticket: my hub is offline\nTeam:",
                    "max_tokens": 2,
                },
            )
            if r.status_code == 200 and r.json()["model"] == served:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(1)

    # What ops scrape: the run by outcome and step, the champion it made, and the gateway
    # serving that very version.
    retrainer_metrics = f"http://127.0.0.1:{settings.retrainer_metrics_port}/metrics"
    text, samples = scrape_until(
        retrainer_metrics,
        lambda s: value(s, "refinery_retrainer_champion_version") == float(version),
    )
    assert value(samples, "refinery_retrainer_champion_version") == float(version)
    assert value(samples, "refinery_retrainer_runs_total", outcome="promoted") == 1
    assert value(samples, "refinery_retrainer_step_seconds_count", step="training") == 1
    assert value(samples, "refinery_retrainer_running") == 0
    assert (value(samples, "refinery_retrainer_last_promotion_timestamp_seconds") or 0) > 0
    assert promtool_lint(text) == ""
    _, gateway = scrape(f"{settings.gateway_url}/metrics")
    assert value(gateway, "refinery_served_model_version") == float(version)


def test_ops_rollback_and_promote_take_the_same_path(retrainer_up: Settings) -> None:
    settings = retrainer_up
    registry = ModelRegistry(settings)
    champion, previous = registry.champion(), registry.by_alias("previous")
    assert champion is not None and previous is not None
    done = run_cli(settings, "rollback", "--reason", "ops test", env=ADMIN)
    assert done.returncode == 0, done.stderr
    assert registry.champion().version == previous.version  # type: ignore[union-attr]
    assert registry.by_alias("previous").version == champion.version  # type: ignore[union-attr]
    done = run_cli(settings, "promote", champion.version, "--reason", "back again", env=ADMIN)
    assert done.returncode == 0, done.stderr
    assert registry.champion().version == champion.version  # type: ignore[union-attr]
    events = [
        e
        for e in read_events(
            settings, Stream.MODELS, {champion.version, previous.version}, "version", timeout_s=20
        )
        if isinstance(e, ModelEvent)
    ]
    assert any(e.action == "rolled_back" and e.version == previous.version for e in events)
    assert any(
        e.action == "promoted"
        and e.version == champion.version
        and any("back again" in r for r in e.reasons)
        for e in events
    )
    missing = run_cli(settings, "promote", "999", env=ADMIN)
    assert missing.returncode != 0 and "999" in missing.stderr + missing.stdout


def test_the_same_trigger_again_trains_nothing(stack: Stack, retrainer_up: Settings) -> None:
    settings = retrainer_up
    trigger_id = f"test-twice-{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        args = ("retrain", "--reason", "twice", "--trigger-id", trigger_id)
        sent = run_cli(settings, *args, env=ADMIN)
        assert sent.returncode == 0, sent.stderr
    wait_for_outcome(settings, trigger_id)
    worker = stack._started["retrainer"]
    deadline = time.monotonic() + 60
    while f"trigger {trigger_id}: done before" not in worker.log_file.read_text(errors="replace"):
        # both deliveries may have come in one poll and been coalesced instead
        if f"coalesced into {trigger_id}" in worker.log_file.read_text(errors="replace"):
            break
        assert time.monotonic() < deadline, worker.log_tail(20)
        time.sleep(1)
    assert len(versions_for(settings, trigger_id)) == 1


def test_a_challenger_trained_on_shuffled_labels_is_rejected(
    bootstrapped: Settings, tmp_path: Path
) -> None:
    settings = bootstrapped.model_copy(update={"topic_prefix": "shuffled", "var_dir": tmp_path})
    ensure_topics(settings)
    send_examples(settings, feedback_events(400, seed=43, shuffle_labels=True))
    registry = ModelRegistry(settings)
    before = registry.champion()
    outcome = Retrainer(settings, TASK).run(
        TriggerEvent(
            trigger_id=f"test-shuffled-{uuid.uuid4().hex[:6]}",
            reason="bad labels",
            requested_by="cli",
        )
    )
    assert outcome.status == "rejected", outcome.reasons
    assert outcome.version is not None
    assert registry.get(outcome.version).tags["status"] == "rejected"
    assert any("golden" in r or "recent" in r for r in outcome.reasons)
    after = registry.champion()
    assert before is not None and after is not None and after.version == before.version
    # Ops heard both decisions, each with its run.
    told = read_events(settings, Stream.DECISIONS, {"retraining_started", "rejected"}, "action")
    by_action = {d.action: d for d in told if isinstance(d, DecisionEvent)}
    started, rejected = by_action["retraining_started"], by_action["rejected"]
    assert started.trigger_id == outcome.trigger_id and started.reasons == ["bad labels"]
    assert rejected.version == outcome.version and rejected.reasons == outcome.reasons
    assert rejected.severity == "warning"
    for told_of in (started, rejected):
        assert told_of.run_url is not None and told_of.run_url.endswith(f"/runs/{outcome.run_id}")


def test_a_failed_run_is_recorded_and_told_to_ops(bootstrapped: Settings, tmp_path: Path) -> None:
    settings = bootstrapped.model_copy(update={"topic_prefix": "failing", "var_dir": tmp_path})
    ensure_topics(settings)
    retrainer = Retrainer(settings, TASK)
    trigger = TriggerEvent(
        trigger_id=f"test-failed-{uuid.uuid4().hex[:6]}", reason="r", requested_by="cli"
    )
    retrainer.record_failure(trigger, ValueError("the snapshot held no examples"))
    run = retrainer.find_run(trigger.trigger_id)
    assert run is not None and run.data.tags[OUTCOME_TAG] == "failed"
    [failed] = read_events(settings, Stream.DECISIONS, {"retraining_failed"}, "action")
    assert isinstance(failed, DecisionEvent) and failed.severity == "critical"
    assert failed.trigger_id == trigger.trigger_id
    assert failed.reasons == ["ValueError: the snapshot held no examples"]
    assert failed.run_url is not None and failed.run_url.endswith(f"/runs/{run.info.run_id}")


def test_the_search_runs_trials_as_nested_runs_and_keeps_the_best(
    bootstrapped: Settings, tmp_path: Path
) -> None:
    search = {"enabled": True, "learning_rate": [1e-4, 3e-3], "lora_r": [8], "epochs": [1]}
    training = TASK.training.model_copy(update={"search": SearchSpec(**search)})
    task = TASK.model_copy(update={"training": training})
    settings = bootstrapped.model_copy(update={"var_dir": tmp_path})
    retrainer = Retrainer(settings, task)
    registry = ModelRegistry(settings)
    base = registry.serving_base(registry.get("1"))
    base_dir = registry.local_copy(base, tmp_path / "models")
    splits = split(task, feedback_events(200, seed=47), [], [])
    with mlflow.start_run(run_name="test-search") as run:
        best = retrainer._train(base_dir, AutoTokenizer.from_pretrained(base_dir), splits, tmp_path)
    client = MlflowClient(settings.mlflow_uri)
    trials = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    losses = sorted(t.data.metrics["best_eval_loss"] for t in trials)
    assert len(trials) == 2
    assert best.best_eval_loss == losses[0]
    assert client.get_run(run.info.run_id).data.params["search_best_trial"] in {"0", "1"}
