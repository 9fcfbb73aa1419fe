"""One retraining run, in the lifecycle's order, as named steps that pass typed results:
collect (snapshot, annotate, split by time, clean: :mod:`splits`) → train (optionally a
small search) → evaluate both models on the same held-out sets, with error analysis →
register → decide (gate, then promote, reject, or start a canary).

Everything a run decides is in its MLflow run (:mod:`record` names it): the snapshot's
offsets come back from there when a killed run resumes, the checkpoints from its work dir,
and the registered version from the run id, so a trigger trains once and registers once
however often it is delivered. The outcome tag marks a finished run.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas

from refinery.common import decisions
from refinery.common.datasets import LabeledText, read_jsonl
from refinery.common.events import TriggerEvent
from refinery.common.promotion import mark_challenger, promote, reject
from refinery.common.registry import GOLDEN_SCORE_TAG, ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.common.task import TaskFile, TrainingSpec
from refinery.retrainer.canary_watch import run_canary
from refinery.retrainer.collect import Snapshot, end_offsets, read_examples
from refinery.retrainer.evaluation import (
    PairedComparison,
    Scored,
    compare,
    error_analysis,
    metrics,
    score_outputs,
    write_report,
)
from refinery.retrainer.gate import GateDecision, gate, main_metric, main_metric_key
from refinery.retrainer.record import (
    CHAMPION_PARAM,
    ERROR_TAG,
    OFFSETS_TAG,
    OUTCOME_TAG,
    REASONS_TAG,
    TRIGGER_KEY_TAG,
    TRIGGER_REASON_TAG,
    TRIGGER_TAG,
    VERSION_TAG,
    Timings,
    evaluation_metric,
    find_run,
    trigger_key,
)
from refinery.retrainer.splits import Splits, frame, split, write_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    trigger_id: str
    run_id: str
    status: str  # promoted | rejected | already_done | interrupted (a canary left running)
    version: str | None
    reasons: list[str]
    timings: Timings | None = None  # the steps a run of this process went through


@dataclass(frozen=True)
class Collected:
    """Step 1: the models a run compares, and the data it learns from and is judged on."""

    champion: VersionInfo  # the one the challenger must beat
    base: VersionInfo  # the model the challenger's adapter applies to
    base_dir: Path
    champion_dir: Path
    tokenizer: Any
    snapshot: Snapshot
    splits: Splits
    seconds: float


@dataclass(frozen=True)
class Evaluated:
    """Step 3: the gate's decision and the figures behind it."""

    decision: GateDecision
    figures: dict[str, float]  # every evaluation metric, logged to the run
    summary: dict[str, float]  # differences and intervals: what model events carry
    seconds: float


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
        from refinery.retrainer.training import check_rank  # heavy: torch, transformers

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
        return find_run(self.client, [self.experiment_id], trigger_id)

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
        pinned = existing.data.params.get(CHAMPION_PARAM) if existing else None
        if existing is None:
            shutil.rmtree(work_dir, ignore_errors=True)  # leftovers of a run never recorded
            offsets = end_offsets(self.settings)
            run = mlflow.start_run(
                run_name=f"retrain {trigger.trigger_id}",
                tags={
                    TRIGGER_TAG: trigger.trigger_id,
                    TRIGGER_KEY_TAG: trigger_key(trigger.trigger_id),
                    "refinery.step": "retrain",
                    TRIGGER_REASON_TAG: trigger.reason[:5000],
                    "refinery.requested_by": trigger.requested_by,
                    OFFSETS_TAG: json.dumps(offsets),
                },
            )
            self._tell(trigger, "retraining_started", run.info.run_id, [trigger.reason])
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
        serving = self.registry.champion()
        if serving is None:
            raise RuntimeError("no champion in the registry: run `refinery bootstrap` first")
        resumed = self._resume(trigger, run_id, serving)
        if resumed is not None:
            return resumed
        champion = self.registry.get(pinned_champion) if pinned_champion else serving
        data = self._collect(champion, offsets, work_dir, trigger.window_start)
        started = time.monotonic()
        trained = self._train(
            data.base_dir, data.tokenizer, data.splits, work_dir, **training_overrides
        )
        training_seconds = time.monotonic() - started
        mlflow.log_metrics(trained.metrics())
        evaluated = self._evaluate(data, trained.model, work_dir)
        golden = evaluated.figures.get(
            evaluation_metric("golden", "challenger", main_metric_key(self.task))
        )
        info = self._register(trigger, run_id, data.base, trained.adapter_dir, golden)
        timings = Timings(data.seconds, training_seconds, evaluated.seconds)
        return self._decide(trigger, run_id, info, evaluated, timings)

    # -- the steps -----------------------------------------------------------------------
    def _resume(self, trigger: TriggerEvent, run_id: str, serving: VersionInfo) -> Outcome | None:
        """A run that got past its decision before a crash: finish what it had started."""
        mine = self._registered_for(run_id)
        if mine is not None and mine.version == serving.version:
            return self._finish_promotion(trigger, run_id, mine)
        running = self.registry.canary()
        if mine is not None and running is not None and running.version == mine.version:
            return self._canary(trigger, run_id, mine, ["the gate passed before a restart"])
        return None

    def _collect(
        self,
        champion: VersionInfo,
        offsets: dict[int, int],
        work_dir: Path,
        drift_began: datetime | None,
    ) -> Collected:
        """``champion`` and its base on disk; the snapshot of rated traffic up to
        ``offsets`` with the base's seed and golden data, split (feedback since
        ``drift_began`` weighted, :func:`splits.split`), logged to the run."""
        from transformers import AutoTokenizer

        started = time.monotonic()
        base = self.registry.serving_base(champion)
        models_dir = self.settings.models_dir
        base_dir = self.registry.local_copy(base, models_dir)
        champion_dir = self.registry.local_copy(champion, models_dir)
        seed = self._artifact_jsonl(base.tags.get("seed_train_uri"), work_dir)
        golden = self._artifact_jsonl(base.tags.get("golden_uri"), work_dir)
        examples, snapshot = read_examples(self.settings, offsets)
        snapshot = replace(
            snapshot, seed_uri=base.tags.get("seed_train_uri"), seed_examples=len(seed)
        )
        splits = split(self.task, examples, seed, golden, since=drift_began)
        mlflow.log_params(
            {
                CHAMPION_PARAM: champion.version,
                "base_version": base.version,
                "method": self.task.training.method,
                "examples_in_snapshot": snapshot.examples,
                "seed_examples": len(seed),
                "train_examples": len(splits.train),
                "validation_examples": len(splits.validation),
                "recent_test_examples": len(splits.recent_test),
                "golden_examples": len(golden),
                "feedback_weighted_since": drift_began.isoformat() if drift_began else "all",
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
        return Collected(
            champion=champion,
            base=base,
            base_dir=base_dir,
            champion_dir=champion_dir,
            tokenizer=AutoTokenizer.from_pretrained(base_dir),
            snapshot=snapshot,
            splits=splits,
            seconds=time.monotonic() - started,
        )

    def _register(
        self,
        trigger: TriggerEvent,
        run_id: str,
        base: VersionInfo,
        adapter_dir: Path,
        golden: float | None,
    ) -> VersionInfo:
        """The challenger in the registry (once per run: a resumed run finds its version)."""
        info = self._registered_for(run_id)
        if info is None:
            mlflow.log_artifacts(str(adapter_dir), "adapter")
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
                    **({GOLDEN_SCORE_TAG: f"{golden:.4f}"} if golden is not None else {}),
                },
                description=f"LoRA on v{base.version} for trigger {trigger.trigger_id}",
            )
        mark_challenger(self.settings, info)
        return info

    def _decide(
        self,
        trigger: TriggerEvent,
        run_id: str,
        info: VersionInfo,
        evaluated: Evaluated,
        timings: Timings,
    ) -> Outcome:
        """The gate's decision carried out: a canary, a promotion, or a rejection."""
        decision = evaluated.decision
        if decision.promote and self.task.canary.share > 0:
            mlflow.log_metrics(timings.as_metrics())
            watched = self._canary(trigger, run_id, info, decision.reasons, evaluated.summary)
            return replace(watched, timings=timings)
        started = time.monotonic()
        if decision.promote:
            promote(
                self.settings, info.version, metrics=evaluated.summary, reasons=decision.reasons
            )
            status = "promoted"
        else:
            reject(self.settings, info, evaluated.summary, decision.reasons)
            status = "rejected"
        timings = replace(timings, switch_seconds=time.monotonic() - started)
        mlflow.log_metrics(timings.as_metrics())
        self._record_outcome(status, info.version, decision.reasons)
        log.info(
            "trigger %s: v%s %s (%s)",
            trigger.trigger_id,
            info.version,
            status,
            "; ".join(decision.reasons),
        )
        return Outcome(trigger.trigger_id, run_id, status, info.version, decision.reasons, timings)

    def _record_outcome(self, status: str, version: str, reasons: list[str]) -> None:
        """The run is finished: its trigger is not run again."""
        mlflow.set_tags(
            {
                OUTCOME_TAG: status,
                VERSION_TAG: version,
                REASONS_TAG: " | ".join(reasons)[:5000],
            }
        )

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
            self._record_outcome(status, info.version, why)
        log.info("trigger %s: v%s %s (%s)", trigger.trigger_id, info.version, status, why[-1])
        return Outcome(trigger.trigger_id, run_id, status, info.version, why)

    def record_failure(self, trigger: TriggerEvent, exc: Exception) -> None:
        """Mark the trigger's run failed (making one if it never started), so ops see why
        and the same trigger is not run again."""
        existing = self.find_run(trigger.trigger_id)
        error = f"{type(exc).__name__}: {exc}"[:5000]
        if existing is not None:
            run_id = existing.info.run_id
            self.client.set_tag(run_id, OUTCOME_TAG, "failed")
            self.client.set_tag(run_id, ERROR_TAG, error)
            self.client.set_terminated(run_id, status="FAILED")
        else:
            run_id = mlflow.start_run(
                run_name=f"retrain {trigger.trigger_id}",
                tags={
                    OUTCOME_TAG: "failed",
                    ERROR_TAG: error,
                    TRIGGER_TAG: trigger.trigger_id,
                    TRIGGER_KEY_TAG: trigger_key(trigger.trigger_id),
                },
            ).info.run_id
            mlflow.end_run(status="FAILED")
        self._tell(trigger, "retraining_failed", run_id, [error])

    def _tell(self, trigger: TriggerEvent, action: str, run_id: str, reasons: list[str]) -> None:
        summary = {
            "retraining_started": "retraining started",
            "retraining_failed": "retraining failed; the champion keeps serving",
        }[action]
        decisions.tell(
            self.settings,
            decisions.decision(
                action,
                self.registry.name,
                summary,
                trigger_id=trigger.trigger_id,
                run_url=decisions.run_url(self.settings.mlflow_uri, self.experiment_id, run_id),
                reasons=reasons,
            ),
        )

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
        self._record_outcome("promoted", info.version, reasons)
        return Outcome(trigger.trigger_id, run_id, "promoted", info.version, reasons)

    # -- helpers of the steps ------------------------------------------------------------
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
        write_jsonl(data / "train.jsonl", splits.train)
        write_jsonl(data / "validation.jsonl", splits.validation)
        write_jsonl(data / "recent_test.jsonl", splits.recent_test)
        write_jsonl(data / "held_corrections.jsonl", splits.held)  # for review, never trained
        mlflow.log_artifacts(str(data), "data")
        for name, items, context in (
            ("train", splits.train, "training"),
            ("recent_test", splits.recent_test, "testing"),
        ):
            dataset = from_pandas(frame(items), name=f"{name}@{snapshot.sha256[:12]}")
            mlflow.log_input(dataset, context=context)

    def _train(
        self, base_dir: Path, tokenizer: Any, splits: Splits, work_dir: Path, **overrides: Any
    ) -> Any:
        """Step 2: a LoRA challenger on the base (``training.TrainResult``); with a search
        configured, one nested run per trial and the best validation loss wins."""
        from refinery.retrainer.training import train

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

    def _evaluate(self, data: Collected, challenger_model: Any, work_dir: Path) -> Evaluated:
        """Step 3: champion and challenger answer the golden and recent test sets; paired
        comparisons, the gate, and the error analysis report, all logged to the run."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from refinery.retrainer.base_model import greedy_complete
        from refinery.retrainer.sequence import prompt_ids

        started = time.monotonic()
        task, tokenizer, splits = self.task.task, data.tokenizer, data.splits
        champion_model: Any = AutoModelForCausalLM.from_pretrained(data.base_dir)
        if data.champion.kind == "lora":
            champion_model = PeftModel.from_pretrained(champion_model, data.champion_dir)
        # Both answer on the device the challenger trained on (a GPU when there is one).
        champion_model.to(challenger_model.device)
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
        figures: dict[str, float] = {}
        summary: dict[str, float] = {}
        for name, (champ, chall) in scored.items():
            for who, model_scored in (("champion", champ), ("challenger", chall)):
                for key, value in metrics(task, model_scored).items():
                    figures[evaluation_metric(name, who, key)] = value
            if champ:
                c = compare(champ, chall, gate_spec.confidence, gate_spec.bootstrap_samples)
                comparisons[name] = c
                summary |= {
                    f"{name}_difference": c.difference,
                    f"{name}_ci_low": c.ci_low,
                    f"{name}_ci_high": c.ci_high,
                }
                figures |= {f"{name}_mcnemar_p": c.mcnemar_p}
        figures |= summary
        mlflow.log_metrics(figures)
        decision = gate(comparisons.get("recent"), comparisons.get("golden"), gate_spec)
        analysis = error_analysis(task, {n: s for n, s in scored.items() if s[0]})
        for path in write_report(analysis, comparisons, decision, work_dir / "report"):
            mlflow.log_artifact(str(path), "evaluation")
        return Evaluated(decision, figures, summary, time.monotonic() - started)
