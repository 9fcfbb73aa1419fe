"""One retraining run, in the lifecycle's order: collect → annotate → split by time → clean
→ train (optionally a small search) → evaluate both models on the same held-out sets →
error analysis → register → gate → promote or reject.

Everything a run decides is in its MLflow run (tag ``refinery.trigger_id``): the
snapshot's offsets come back from there when a killed run resumes, the checkpoints from
its work dir, and the registered version from the run id, so a trigger trains once and
registers once however often it is delivered. ``refinery.outcome`` marks a finished run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas

from services.common.datasets import LabeledText, read_jsonl
from services.common.events import ExampleEvent, TriggerEvent
from services.common.promotion import (
    mark_challenger,
    promote,
    reject,
)
from services.common.registry import ModelRegistry, VersionInfo
from services.common.settings import Settings
from services.common.task import TaskFile, TrainingSpec
from services.retrainer.canary_watch import run_canary
from services.retrainer.clean import CleanReport, clean, normalize
from services.retrainer.collect import Snapshot, end_offsets, read_examples
from services.retrainer.evaluation import (
    PairedComparison,
    Scored,
    compare,
    error_analysis,
    metrics,
    score_outputs,
    write_report,
)
from services.retrainer.examples import TrainingExample, annotate, from_seed
from services.retrainer.gate import GateDecision, gate, main_metric
from services.retrainer.sources import SourceReport, cap_share, curate, named_rater

log = logging.getLogger(__name__)

TRIGGER_TAG = "refinery.trigger_id"
OUTCOME_TAG = "refinery.outcome"
OFFSETS_TAG = "refinery.snapshot_offsets"
TRIGGER_KEY_TAG = "refinery.trigger_key"


def _key(trigger_id: str) -> str:
    return hashlib.sha256(trigger_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Outcome:
    trigger_id: str
    run_id: str
    status: str  # promoted | rejected | already_done | interrupted (a canary left running)
    version: str | None
    reasons: list[str]


@dataclass(frozen=True)
class Splits:
    """The data of one run: train and validation from the pool, test from recent traffic."""

    train: list[TrainingExample]
    validation: list[TrainingExample]
    recent_test: list[TrainingExample]
    golden: list[LabeledText]
    pool_report: CleanReport
    test_report: CleanReport
    held_out_overlap: int
    held: list[TrainingExample]  # corrections held for review (sources.py)
    source_report: SourceReport


def split(
    task: TaskFile,
    feedback: Sequence[ExampleEvent],
    seed: Sequence[LabeledText],
    golden: Sequence[LabeledText],
) -> Splits:
    """Annotate, weigh sources (one rating per answer, contradicted corrections held, shares
    capped), take the newest rated share as the recent test split (no source over its share
    there either), clean, split off validation. Nothing whose prompt (normalized) is in a
    test set is trained on. Examples from rated traffic appear ``training.feedback_weight``
    times in the training split (the replayed seed data once)."""
    rated = sorted((annotate(e) for e in feedback), key=lambda e: (e.at, e.example_id))
    seed_answers = {normalize(s.prompt): s.completion for s in seed}
    annotated, held, source_report = curate(rated, task.task, task.feedback, seed_answers)
    positives = [e for e in annotated if e.positive]
    n_test = round(len(positives) * task.gate.test_share)
    newest = positives[len(positives) - n_test :] if n_test else []
    newest = cap_share(newest, lambda e: e.key_id, task.feedback.max_key_share)
    newest = cap_share(newest, named_rater, task.feedback.max_user_share)
    test_ids = {e.example_id for e in newest}
    recent_raw = [e for e in annotated if e.example_id in test_ids]
    recent_test, test_report = clean(recent_raw, task.task, task.cleaning)
    held_out = {normalize(e.prompt) for e in recent_raw} | {normalize(g.prompt) for g in golden}
    pool_raw = [from_seed(s) for s in seed] + [e for e in annotated if e.example_id not in test_ids]
    pool = [e for e in pool_raw if normalize(e.prompt) not in held_out]
    cleaned, pool_report = clean(pool, task.task, task.cleaning)
    rng = random.Random(task.training.seed)
    order = list(range(len(cleaned)))
    rng.shuffle(order)
    n_val = max(1, round(len(cleaned) * task.training.validation_share))
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(cleaned) if i not in val_idx]
    validation = [e for i, e in enumerate(cleaned) if i in val_idx]
    # Validation weighs sources as training does: early stopping then watches the new
    # traffic's loss as much as training counts it, not mostly the replayed seed's.
    weight = task.training.feedback_weight
    train += [e for e in train if e.source != "seed"] * (weight - 1)
    validation += [e for e in validation if e.source != "seed"] * (weight - 1)
    return Splits(
        train=train,
        validation=validation,
        recent_test=recent_test,
        golden=list(golden),
        pool_report=pool_report,
        test_report=test_report,
        held_out_overlap=len(pool_raw) - len(pool),
        held=held,
        source_report=source_report,
    )


def _jsonl(path: Path, items: Sequence[TrainingExample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for e in items:
            row = asdict(e)
            row["at"] = e.at.isoformat() if e.at else None
            # A chat example's turns are pydantic models: written as the OpenAI messages.
            row["messages"] = [m.model_dump() for m in e.messages] if e.messages else None
            out.write(json.dumps(row) + "\n")


def _frame(items: Sequence[TrainingExample]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [e.prompt for e in items],
            "target": [e.target for e in items],
            "positive": [e.positive for e in items],
            "source": [e.source for e in items],
            "segment": [e.segment or "" for e in items],
        }
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120]


def _flat(prefix: str, spec: TrainingSpec) -> dict[str, Any]:
    out = {}
    for key, value in spec.model_dump().items():
        if key == "search":
            continue
        out[f"{prefix}{key}"] = ",".join(value) if isinstance(value, list) else value
    return out


class Retrainer:
    """Runs the pipeline for triggers; one instance per retrainer process."""

    def __init__(
        self, settings: Settings, task: TaskFile, stop: threading.Event | None = None
    ) -> None:
        from services.retrainer.training import check_rank  # heavy: torch, transformers

        check_rank(task.training, settings)  # an adapter vLLM cannot load is no challenger
        self.settings = settings
        self.task = task
        self.registry = ModelRegistry(settings)
        self.client = MlflowClient(tracking_uri=settings.mlflow_uri)
        mlflow.set_tracking_uri(settings.mlflow_uri)
        self.experiment_id = mlflow.set_experiment(settings.experiment).experiment_id
        self.work_root = settings.var_dir / "retrainer"
        self.stop = stop or threading.Event()  # set: a canary watch ends, to resume later

    # -- idempotency ---------------------------------------------------------------------
    def find_run(self, trigger_id: str) -> Any | None:
        # Looked up by a hash: a trigger id may hold quotes the filter language would misread.
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIGGER_KEY_TAG}` = '{_key(trigger_id)}'",
            max_results=5,
        )
        return runs[0] if runs else None

    def _registered_for(self, run_id: str) -> VersionInfo | None:
        found = self.client.search_model_versions(f"run_id = '{run_id}'")
        mine = [mv for mv in found if mv.name == self.registry.name]
        return VersionInfo.from_mlflow(mine[0]) if mine else None

    # -- the run -------------------------------------------------------------------------
    def run(self, trigger: TriggerEvent, **training_overrides: Any) -> Outcome:
        existing = self.find_run(trigger.trigger_id)
        if existing is not None and OUTCOME_TAG in existing.data.tags:
            log.info(
                "trigger %s: done before (run %s, %s); skipping",
                trigger.trigger_id,
                existing.info.run_id,
                existing.data.tags[OUTCOME_TAG],
            )
            return Outcome(trigger.trigger_id, existing.info.run_id, "already_done", None, [])
        work_dir = self.work_root / _safe(trigger.trigger_id)
        # A resumed run gates against the champion it started with, never the one now
        # serving: after a crash past the alias move, that is this run's own challenger.
        pinned = existing.data.params.get("champion_version") if existing else None
        if existing is None:
            shutil.rmtree(work_dir, ignore_errors=True)  # leftovers of a run never recorded
            offsets = end_offsets(self.settings)
            run = mlflow.start_run(
                run_name=f"retrain {trigger.trigger_id}",
                tags={
                    TRIGGER_TAG: trigger.trigger_id,
                    TRIGGER_KEY_TAG: _key(trigger.trigger_id),
                    "refinery.step": "retrain",
                    "refinery.reason": trigger.reason[:5000],
                    "refinery.requested_by": trigger.requested_by,
                    OFFSETS_TAG: json.dumps(offsets),
                },
            )
        else:
            offsets = {int(k): v for k, v in json.loads(existing.data.tags[OFFSETS_TAG]).items()}
            run = mlflow.start_run(run_id=existing.info.run_id)
            log.info("trigger %s: resuming run %s", trigger.trigger_id, run.info.run_id)
        with run:
            return self._run(
                trigger, run.info.run_id, offsets, work_dir, pinned, **training_overrides
            )

    def _run(
        self,
        trigger: TriggerEvent,
        run_id: str,
        offsets: dict[int, int],
        work_dir: Path,
        pinned_champion: str | None = None,
        **training_overrides: Any,
    ) -> Outcome:
        from transformers import AutoTokenizer

        timings: dict[str, float] = {}
        started = time.monotonic()
        serving = self.registry.champion()
        if serving is None:
            raise RuntimeError("no champion in the registry: run `refinery bootstrap` first")
        mine = self._registered_for(run_id)
        if mine is not None and mine.version == serving.version:
            return self._finish_promotion(trigger, run_id, mine)
        running = self.registry.canary()
        if mine is not None and running is not None and running.version == mine.version:
            return self._canary(trigger, run_id, mine, ["the gate passed before a restart"])
        champion = self.registry.get(pinned_champion) if pinned_champion else serving
        base = self.registry.serving_base(champion)
        models_dir = self.settings.models_dir
        base_dir = self.registry.local_copy(base, models_dir)
        champion_dir = self.registry.local_copy(champion, models_dir)
        seed = self._artifact_jsonl(base.tags.get("seed_train_uri"), work_dir)
        golden = self._artifact_jsonl(base.tags.get("golden_uri"), work_dir)

        examples, snapshot = read_examples(self.settings, offsets)
        snapshot = Snapshot(
            **{
                **asdict(snapshot),
                "seed_uri": base.tags.get("seed_train_uri"),
                "seed_examples": len(seed),
            }
        )
        splits = split(self.task, examples, seed, golden)
        timings["data_seconds"] = time.monotonic() - started
        mlflow.log_params(
            {
                "champion_version": champion.version,
                "base_version": base.version,
                "method": self.task.training.method,
                "examples_in_snapshot": snapshot.examples,
                "seed_examples": len(seed),
                "train_examples": len(splits.train),
                "validation_examples": len(splits.validation),
                "recent_test_examples": len(splits.recent_test),
                "golden_examples": len(golden),
                **_flat("training.", self.task.training),
                "gate.metric": main_metric(self.task),
            }
        )
        mlflow.log_metrics(
            {
                **{f"pool_{k}": v for k, v in splits.pool_report.as_metrics().items()},
                **{f"test_{k}": v for k, v in splits.test_report.as_metrics().items()},
                "held_out_overlap_removed": splits.held_out_overlap,
                **splits.source_report.as_metrics(),
            }
        )
        self._log_data(snapshot, splits, work_dir)

        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        t0 = time.monotonic()
        result = self._train(base_dir, tokenizer, splits, work_dir, **training_overrides)
        timings["training_seconds"] = time.monotonic() - t0
        mlflow.log_metrics(result.metrics())

        t0 = time.monotonic()
        decision, eval_metrics = self._evaluate(
            base_dir, champion, champion_dir, result.model, tokenizer, splits, work_dir
        )
        timings["evaluation_seconds"] = time.monotonic() - t0
        mlflow.log_metrics(eval_metrics)

        info = self._registered_for(run_id)
        if info is None:
            mlflow.log_artifacts(str(result.adapter_dir), "adapter")
            info = self.registry.register(
                f"{mlflow.get_artifact_uri('adapter')}",
                run_id,
                tags={
                    "kind": "lora",
                    "base_version": base.version,
                    "trigger_id": trigger.trigger_id,
                    "golden_uri": base.tags.get("golden_uri", ""),
                    "seed_train_uri": base.tags.get("seed_train_uri", ""),
                    "status": "challenger",
                },
                description=f"LoRA on v{base.version} for trigger {trigger.trigger_id}",
            )
        mark_challenger(self.settings, info)
        summary = {k: v for k, v in eval_metrics.items() if "_ci_" in k or "difference" in k}
        t0 = time.monotonic()
        if decision.promote and self.task.canary.share > 0:
            mlflow.log_metrics(timings)
            return self._canary(trigger, run_id, info, decision.reasons, summary)
        if decision.promote:
            promote(self.settings, info.version, metrics=summary, reasons=decision.reasons)
            status = "promoted"
        else:
            reject(self.settings, info, summary, decision.reasons)
            status = "rejected"
        timings["switch_seconds"] = time.monotonic() - t0
        mlflow.log_metrics(timings)
        mlflow.set_tags(
            {
                OUTCOME_TAG: status,
                "refinery.version": info.version,
                "refinery.reasons": " | ".join(decision.reasons)[:5000],
            }
        )
        log.info(
            "trigger %s: v%s %s (%s)",
            trigger.trigger_id,
            info.version,
            status,
            "; ".join(decision.reasons),
        )
        return Outcome(trigger.trigger_id, run_id, status, info.version, decision.reasons)

    def _canary(
        self,
        trigger: TriggerEvent,
        run_id: str,
        info: VersionInfo,
        reasons: list[str],
        metrics: dict[str, float] | None = None,
    ) -> Outcome:
        """The gate passed: a share of users gets ``info`` and their thumbs decide."""
        status, why = run_canary(
            self.settings, self.task, run_id, info, reasons, metrics or {}, self.stop
        )
        if status != "interrupted":
            mlflow.set_tags(
                {
                    OUTCOME_TAG: status,
                    "refinery.version": info.version,
                    "refinery.reasons": " | ".join(why)[:5000],
                }
            )
        log.info("trigger %s: v%s %s (%s)", trigger.trigger_id, info.version, status, why[-1])
        return Outcome(trigger.trigger_id, run_id, status, info.version, why)

    def record_failure(self, trigger: TriggerEvent, exc: Exception) -> None:
        """Mark the trigger's run failed (making one if it never started), so ops see why
        and the same trigger is not run again."""
        existing = self.find_run(trigger.trigger_id)
        tags = {OUTCOME_TAG: "failed", "refinery.error": f"{type(exc).__name__}: {exc}"[:5000]}
        if existing is not None:
            self.client.set_tag(existing.info.run_id, OUTCOME_TAG, "failed")
            self.client.set_tag(existing.info.run_id, "refinery.error", tags["refinery.error"])
            self.client.set_terminated(existing.info.run_id, status="FAILED")
            return
        mlflow.start_run(
            run_name=f"retrain {trigger.trigger_id}",
            tags={
                **tags,
                TRIGGER_TAG: trigger.trigger_id,
                TRIGGER_KEY_TAG: _key(trigger.trigger_id),
            },
        )
        mlflow.end_run(status="FAILED")

    def _finish_promotion(self, trigger: TriggerEvent, run_id: str, info: VersionInfo) -> Outcome:
        """The run crashed after moving the champion alias to its version: the gate had
        passed. Announce it (idempotent) and record the outcome; evaluate nothing again."""
        log.info(
            "trigger %s: v%s was promoted before a crash; recording it",
            trigger.trigger_id,
            info.version,
        )
        reasons = ["promoted before the retrainer stopped; outcome recorded on resume"]
        promote(self.settings, info.version, reasons=reasons)
        mlflow.set_tags(
            {
                OUTCOME_TAG: "promoted",
                "refinery.version": info.version,
                "refinery.reasons": reasons[0],
            }
        )
        return Outcome(trigger.trigger_id, run_id, "promoted", info.version, reasons)

    def _artifact_jsonl(self, uri: str | None, work_dir: Path) -> list[LabeledText]:
        if not uri:
            return []
        dest = work_dir / "lineage"
        dest.mkdir(parents=True, exist_ok=True)
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))
        return read_jsonl(Path(path))

    def _log_data(self, snapshot: Snapshot, splits: Splits, work_dir: Path) -> None:
        data = work_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data / "snapshot.json").write_text(snapshot.to_json())
        (data / "cleaning.json").write_text(
            json.dumps(
                {"pool": asdict(splits.pool_report), "recent_test": asdict(splits.test_report)},
                indent=2,
            )
        )
        _jsonl(data / "train.jsonl", splits.train)
        _jsonl(data / "validation.jsonl", splits.validation)
        _jsonl(data / "recent_test.jsonl", splits.recent_test)
        _jsonl(data / "held_corrections.jsonl", splits.held)  # for review, never trained on
        mlflow.log_artifacts(str(data), "data")
        for name, items, context in (
            ("train", splits.train, "training"),
            ("recent_test", splits.recent_test, "testing"),
        ):
            dataset = from_pandas(_frame(items), name=f"{name}@{snapshot.sha256[:12]}")
            mlflow.log_input(dataset, context=context)

    def _train(
        self,
        base_dir: Path,
        tokenizer: Any,
        splits: Splits,
        work_dir: Path,
        **overrides: Any,
    ) -> Any:
        from services.retrainer.training import train

        spec = self.task.training
        search = spec.search
        if not search.enabled or overrides:
            return train(
                base_dir, tokenizer, splits.train, splits.validation, spec, work_dir, **overrides
            )
        best = None
        deadline = time.monotonic() + search.budget_seconds
        grid = list(itertools.product(search.learning_rate, search.lora_r, search.epochs))
        for i, (lr, rank, epochs) in enumerate(grid):
            if time.monotonic() > deadline and best is not None:
                log.info("search: budget spent after %d of %d trials", i, len(grid))
                break
            trial = spec.model_copy(update={"learning_rate": lr, "epochs": epochs})
            with mlflow.start_run(
                run_name=f"trial {i}: lr={lr} r={rank} epochs={epochs}", nested=True
            ):
                mlflow.log_params({"learning_rate": lr, "lora_r": rank, "epochs": epochs})
                result = train(
                    base_dir,
                    tokenizer,
                    splits.train,
                    splits.validation,
                    trial,
                    work_dir / f"trial-{i}",
                    lora_r=rank,
                )
                mlflow.log_metrics(result.metrics())
            if best is None or result.best_eval_loss < best[1].best_eval_loss:
                best = (i, result)
        assert best is not None
        mlflow.log_param("search_best_trial", best[0])
        return best[1]

    def _evaluate(
        self,
        base_dir: Path,
        champion: VersionInfo,
        champion_dir: Path,
        challenger_model: Any,
        tokenizer: Any,
        splits: Splits,
        work_dir: Path,
    ) -> tuple[GateDecision, dict[str, float]]:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from services.retrainer.base_model import greedy_complete
        from services.retrainer.sequence import prompt_ids

        task = self.task.task
        champion_model: Any = AutoModelForCausalLM.from_pretrained(base_dir)
        if champion.kind == "lora":
            champion_model = PeftModel.from_pretrained(champion_model, champion_dir)
        champion_model.eval()
        challenger_model.eval()
        sets = {
            "golden": [(g.prompt, g.completion, g.segment, g.messages) for g in splits.golden],
            "recent": [(e.prompt, e.target, e.segment, e.messages) for e in splits.recent_test],
        }
        metric = main_metric(self.task)
        scored: dict[str, tuple[list[Scored], list[Scored]]] = {}
        for name, items in sets.items():
            prompts = [p for p, _, _, _ in items]
            targets = [t for _, t, _, _ in items]
            segments = [s for _, _, s, _ in items]
            # Generated from the ids vLLM would serve (a conversation through the template).
            ids = [prompt_ids(tokenizer, p, m) for p, _, _, m in items]
            both = []
            for model in (champion_model, challenger_model):
                outputs = greedy_complete(model, tokenizer, ids, task.max_new_tokens) if ids else []
                both.append(score_outputs(task, prompts, targets, outputs, segments, metric=metric))
            scored[name] = (both[0], both[1])
        gate_spec = self.task.gate
        comparisons: dict[str, PairedComparison] = {}
        values: dict[str, float] = {}
        for name, (champ, chall) in scored.items():
            for who, model_scored in (("champion", champ), ("challenger", chall)):
                for key, value in metrics(task, model_scored).items():
                    values[f"{name}_{who}_{key}"] = value
            if champ:
                c = compare(champ, chall, gate_spec.confidence, gate_spec.bootstrap_samples)
                comparisons[name] = c
                values[f"{name}_difference"] = c.difference
                values[f"{name}_ci_low"] = c.ci_low
                values[f"{name}_ci_high"] = c.ci_high
                values[f"{name}_mcnemar_p"] = c.mcnemar_p
        decision = gate(comparisons.get("recent"), comparisons.get("golden"), gate_spec)
        analysis = error_analysis(task, {n: s for n, s in scored.items() if s[0]})
        report_dir = work_dir / "report"
        for path in write_report(analysis, comparisons, decision, report_dir):
            mlflow.log_artifact(str(path), "evaluation")
        return decision, values
