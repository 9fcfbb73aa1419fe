"""``refinery bootstrap``: make the first versions of the registered model, crown one champion.

Without ``--base`` it builds the offline base model from the demo corpus and crowns it.
With ``--base`` (a Hugging Face folder or hub id) it registers that model as the base
version, and with ``--train`` too it fine-tunes a LoRA adapter on the training file (target
modules from the architecture, rank within what vLLM is started with) and crowns base +
adapter, so the first champion already knows the user's task. Either way the golden set is
stored with the run as the frozen test set, and never trained on.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from refinery.common.datasets import LabeledText, read_jsonl, write_jsonl
from refinery.common.exceptions import ConfigError
from refinery.common.registry import CHAMPION, GOLDEN_SCORE_TAG, ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.common.task import TaskFile
from refinery.demo.corpus import generate
from refinery.retrainer.evaluation import MEAN_KEY, item_scores
from refinery.retrainer.gate import main_metric

log = logging.getLogger(__name__)

BUILTIN_BASE = "builtin:tiny-llama"


@dataclass(frozen=True)
class BootstrapResult:
    version: VersionInfo
    created: bool
    golden_score: float | None


def _digest(examples: list[LabeledText]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(e.model_dump_json().encode())
    return h.hexdigest()[:16]


def score(task: TaskFile, completions: list[str], golden: list[LabeledText]) -> float:
    """The mean per-item score in the gate's metric (0-1), scored as the gate scores it."""
    targets = [ex.completion for ex in golden]
    scores = item_scores(task.task, main_metric(task), targets, completions)
    return sum(scores) / len(scores)


def golden_set_score(
    task: TaskFile, model: Any, tokenizer: Any, golden: list[LabeledText]
) -> float:
    """Greedy answers to the golden prompts, as vLLM would serve them, scored by ``score``."""
    from refinery.retrainer.base_model import greedy_complete
    from refinery.retrainer.sequence import prompt_ids

    ids = [prompt_ids(tokenizer, e.prompt, e.messages) for e in golden]
    return score(task, greedy_complete(model, tokenizer, ids, task.task.max_new_tokens), golden)


def bootstrap(
    settings: Settings,
    task: TaskFile,
    base: str | None = None,
    train_file: Path | None = None,
    golden_file: Path | None = None,
    force: bool = False,
) -> BootstrapResult:
    """Register version 1 (or a new base version with ``force``) and set alias champion."""
    registry = ModelRegistry(settings)
    current = registry.champion() if registry.exists() else None
    if current is not None and not force:
        log.info(
            "bootstrap: %s already has champion v%s; nothing to do", registry.name, current.version
        )
        return BootstrapResult(current, created=False, golden_score=None)

    seed = task.data.demo_seed
    train = (
        read_jsonl(train_file)
        if train_file
        else generate(task.task, task.data.demo_train_size, seed)
    )
    golden = (
        read_jsonl(golden_file)
        if golden_file
        else generate(task.task, task.data.demo_golden_size, seed + 1)
    )
    golden_prompts = {e.prompt for e in golden}
    kept = [e for e in train if e.prompt not in golden_prompts]
    # Imported only now: torch and transformers take ~15 s to import on two cores, and the
    # checks above (existing champion, bad data files) should answer without that wait.
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

    from refinery.retrainer.base_model import (
        build_model,
        corpus_text,
        pretrain,
        train_tokenizer,
    )

    log.info(
        "bootstrap: %d training examples (%d dropped: also in the golden set), %d golden",
        len(kept),
        len(train) - len(kept),
        len(golden),
    )

    params: dict[str, object] = {
        "base": base or BUILTIN_BASE,
        "train_examples": len(kept),
        "golden_examples": len(golden),
        "seed": seed,
    }
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="refinery-bootstrap-") as tmp:
        model_dir = Path(tmp) / "model"
        model: PreTrainedModel
        tokenizer: PreTrainedTokenizerBase
        if base is None:
            spec = task.base_model
            tokenizer = train_tokenizer([corpus_text(e) for e in kept], spec.vocab_size)
            model = build_model(spec, tokenizer, seed)
            result = pretrain(model, tokenizer, kept, spec, seed)
            params.update(spec.model_dump())
            metrics.update(
                train_loss=result.final_loss,
                train_seconds=result.seconds,
                train_examples_per_s=result.examples_per_s,
                train_steps=result.steps,
            )
            log.info(
                "bootstrap: trained %d steps in %.1fs, loss %.3f",
                result.steps,
                result.seconds,
                result.final_loss,
            )
        else:
            tokenizer = AutoTokenizer.from_pretrained(base)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained(base)  # type: ignore[assignment]
        params["parameters"] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)

        golden_score = golden_set_score(task, model, tokenizer, golden)
        metrics[f"golden_{MEAN_KEY[main_metric(task)]}"] = golden_score
        log.info("bootstrap: golden-set score %.3f", golden_score)

        data_dir = Path(tmp) / "data"
        write_jsonl(data_dir / "train.jsonl", kept)
        write_jsonl(data_dir / "golden.jsonl", golden)
        shutil.copy(settings.task_file, data_dir / "refinery.yaml")

        mlflow.set_tracking_uri(settings.mlflow_uri)
        mlflow.set_experiment(settings.experiment)
        with mlflow.start_run(run_name="bootstrap") as run:
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
            mlflow.set_tags(
                {
                    "refinery.step": "bootstrap",
                    "refinery.train_sha": _digest(kept),
                    "refinery.golden_sha": _digest(golden),
                }
            )
            mlflow.log_artifacts(str(model_dir), "model")
            mlflow.log_artifacts(str(data_dir), "data")
            source = f"{run.info.artifact_uri}/model"
            run_id = run.info.run_id

    info = registry.register(
        source,
        run_id,
        tags={
            "kind": "base",
            "base_model": base or BUILTIN_BASE,
            "golden_uri": f"runs:/{run_id}/data/golden.jsonl",
            "seed_train_uri": f"runs:/{run_id}/data/train.jsonl",
            GOLDEN_SCORE_TAG: f"{golden_score:.4f}",
        },
        description=f"base model {base or BUILTIN_BASE}, bootstrapped",
    )
    if base is not None and train_file is not None:
        tuned, golden_score = _fine_tune(settings, task, info, kept, golden)
        info = tuned
    registry.set_alias(CHAMPION, info.version)
    log.info("bootstrap: registered %s v%s as %s", info.name, info.version, CHAMPION)
    return BootstrapResult(info, created=True, golden_score=golden_score)


def _fine_tune(
    settings: Settings,
    task: TaskFile,
    base: VersionInfo,
    train: list[LabeledText],
    golden: list[LabeledText],
) -> tuple[VersionInfo, float]:
    """A LoRA on the user's base, trained on their training file: the first champion."""
    from transformers import AutoTokenizer

    from refinery.retrainer.splits import split
    from refinery.retrainer.training import check_rank
    from refinery.retrainer.training import train as train_adapter

    check_rank(task.training, settings)
    registry = ModelRegistry(settings)
    base_dir = registry.local_copy(base, settings.models_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    splits = split(task, [], train, golden)
    if not splits.train:
        raise ConfigError(
            f"--train: no example is left to fine-tune on after cleaning ({len(train)} read; "
            f"dropped by step: {splits.pool_report.removed}); give more, distinct examples"
        )
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_experiment(settings.experiment)
    with (
        tempfile.TemporaryDirectory(prefix="refinery-bootstrap-lora-") as tmp,
        mlflow.start_run(run_name="bootstrap adapter") as run,
    ):
        mlflow.set_tags({"refinery.step": "bootstrap", "refinery.base_version": base.version})
        mlflow.log_params(
            {"train_examples": len(splits.train), "validation_examples": len(splits.validation)}
        )
        result = train_adapter(
            base_dir, tokenizer, splits.train, splits.validation, task.training, Path(tmp)
        )
        mlflow.log_metrics(result.metrics())
        result.model.eval()
        golden_score = golden_set_score(task, result.model, tokenizer, golden)
        mlflow.log_metric("golden_score", golden_score)
        mlflow.log_artifacts(str(result.adapter_dir), "adapter")
        source = f"{run.info.artifact_uri}/adapter"
        run_id = run.info.run_id
    info = registry.register(
        source,
        run_id,
        tags={
            "kind": "lora",
            "base_version": base.version,
            "golden_uri": base.tags["golden_uri"],
            "seed_train_uri": base.tags["seed_train_uri"],
            "status": "champion",
            GOLDEN_SCORE_TAG: f"{golden_score:.4f}",
        },
        description=f"LoRA on v{base.version} fine-tuned on the bootstrap training file",
    )
    log.info(
        "bootstrap: v%s = v%s + LoRA on %d examples; golden %.3f",
        info.version,
        base.version,
        len(splits.train),
        golden_score,
    )
    return info, golden_score
