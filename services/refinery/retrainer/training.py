"""Fine-tuning a challenger: a LoRA adapter (PEFT) on the champion's base model.

SFT runs on the transformers ``Trainer`` with our own sequencing (loss on the target
only); KTO on TRL's ``KTOTrainer``, which also learns from thumbs-down answers that have
no correction. Both evaluate on the validation split a few times per epoch, stop early
when validation loss stops improving, keep the best checkpoint, and save checkpoints so
a killed run resumes where it was (same ``work_dir``) instead of starting over. Progress
goes to the log and, when a run is active, to MLflow.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from refinery.common.exceptions import ConfigError
from refinery.common.settings import Settings
from refinery.common.task import TrainingSpec
from refinery.retrainer.examples import TrainingExample
from refinery.retrainer.sequence import PadCollator, build_dataset, rendered_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    model: PeftModel
    adapter_dir: Path
    best_eval_loss: float
    steps: int
    max_steps: int
    epochs: float
    seconds: float
    examples_per_s: float
    stopped_early: bool
    resumed_from: str | None

    def metrics(self) -> dict[str, float]:
        return {
            "best_eval_loss": self.best_eval_loss,
            "train_steps": self.steps,
            "train_epochs": self.epochs,
            "train_seconds": self.seconds,
            "train_examples_per_s": self.examples_per_s,
            "stopped_early": float(self.stopped_early),
        }


class _Progress(TrainerCallback):
    """Training logs to the log file and the active MLflow run; the time budget enforced."""

    def __init__(self, budget_s: float, step_offset: int = 0) -> None:
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.step_offset = step_offset

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
        log.info(
            "train: step %d/%d epoch %.2f %s",
            state.global_step,
            state.max_steps,
            state.epoch or 0,
            " ".join(f"{k}={v:.4g}" for k, v in numbers.items()),
        )
        if mlflow.active_run() is not None and numbers:
            mlflow.log_metrics(numbers, step=self.step_offset + state.global_step)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if time.monotonic() - self.started > self.budget_s:
            log.warning(
                "train: time budget %.0fs reached at step %d", self.budget_s, state.global_step
            )
            control.should_training_stop = True


def lora_config(spec: TrainingSpec, r: int | None = None) -> LoraConfig:
    rank = r or spec.lora_r
    return LoraConfig(
        r=rank,
        lora_alpha=spec.lora_alpha * rank // spec.lora_r,  # same scale at any rank
        lora_dropout=spec.lora_dropout,
        # None: PEFT's default modules for the model's architecture (q/v for Llama, Qwen2).
        target_modules=list(spec.target_modules) if spec.target_modules else None,
        task_type="CAUSAL_LM",
    )


def check_rank(spec: TrainingSpec, settings: Settings) -> None:
    """Every rank training may use must be one vLLM can load (``--max-lora-rank``)."""
    ranks = {spec.lora_r, *(spec.search.lora_r if spec.search.enabled else [])}
    too_big = sorted(r for r in ranks if r > settings.vllm_max_lora_rank)
    if too_big:
        raise ConfigError(
            f"training.lora_r {too_big} exceeds REFINERY_VLLM_MAX_LORA_RANK="
            f"{settings.vllm_max_lora_rank}: vLLM could not serve the adapter; lower the rank "
            "in the task file or raise the setting (vLLM allows 8, 16, 32, 64, ...)"
        )


def mixed_precision(cuda: bool, bf16_supported: bool) -> dict[str, bool]:
    """bf16 autocast where the GPU has it (Ampere and later), full float32 otherwise: on the
    CPU, and on GPUs without bf16, where fp16's overflow would need a loss scaler to tune."""
    return {"bf16": cuda and bf16_supported, "fp16": False}


def _precision_here() -> dict[str, bool]:
    cuda = torch.cuda.is_available()
    return mixed_precision(cuda, cuda and torch.cuda.is_bf16_supported())


def _arguments(
    spec: TrainingSpec, work_dir: Path, train_size: int, **overrides: Any
) -> dict[str, Any]:
    steps_per_epoch = math.ceil(train_size / spec.batch_size)
    every = max(1, steps_per_epoch // spec.evals_per_epoch)
    args: dict[str, Any] = {
        "output_dir": str(work_dir / "checkpoints"),
        "num_train_epochs": spec.epochs,
        "per_device_train_batch_size": spec.batch_size,
        "per_device_eval_batch_size": spec.batch_size * 2,
        "learning_rate": spec.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, steps_per_epoch * spec.epochs // 20),
        "eval_strategy": "steps",
        "eval_steps": every,
        "save_strategy": "steps",
        "save_steps": every,
        "save_total_limit": 2,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "logging_steps": max(1, every // 2),
        "label_names": ["labels"],
        "report_to": "none",
        "seed": spec.seed,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
        **_precision_here(),
    }
    args.update(overrides)
    return args


def _finish(
    trainer: Trainer, work_dir: Path, resumed: str | None, started: float, examples: int
) -> TrainResult:
    """``examples``: training examples per epoch. The rate counts them, not steps x batch
    size, which counts each epoch's last, short batch as full (1,024 for 1,000 at batch 32)."""
    state = trainer.state
    seconds = time.monotonic() - started
    done_here = state.global_step - (int(Path(resumed).name.split("-")[-1]) if resumed else 0)
    steps_per_epoch = len(trainer.get_train_dataloader())  # batches: one device, no accumulation
    done_examples = done_here / steps_per_epoch * examples
    adapter_dir = work_dir / "adapter"
    model = trainer.model
    assert isinstance(model, PeftModel)
    model.save_pretrained(str(adapter_dir))
    return TrainResult(
        model=model,
        adapter_dir=adapter_dir,
        best_eval_loss=float(state.best_metric) if state.best_metric is not None else math.nan,
        steps=state.global_step,
        max_steps=state.max_steps,
        epochs=float(state.epoch or 0),
        seconds=seconds,
        examples_per_s=done_examples / seconds if seconds > 0 else 0.0,
        stopped_early=state.global_step < state.max_steps,
        resumed_from=resumed,
    )


def _callbacks(spec: TrainingSpec) -> list[TrainerCallback]:
    return [
        EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience),
        _Progress(spec.max_train_seconds),
    ]


def _run(trainer: Trainer, work_dir: Path, what: str, examples: int) -> TrainResult:
    """Train (from the last checkpoint in ``work_dir`` if there is one) and save the adapter."""
    trainer.remove_callback(PrinterCallback)  # _Progress logs instead
    resumed = _last_checkpoint(work_dir)
    log.info("train: %s; %s", what, f"resuming from {resumed}" if resumed else "from the start")
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=resumed)
    return _finish(trainer, work_dir, resumed, started, examples)


def _last_checkpoint(work_dir: Path) -> str | None:
    """The newest complete checkpoint: a process killed while saving leaves a folder
    without its trainer state, which cannot be resumed from; it is skipped."""
    checkpoints = work_dir / "checkpoints"
    if not checkpoints.is_dir():
        return None
    numbered = [d for d in checkpoints.glob("checkpoint-*") if d.name.split("-")[-1].isdigit()]
    for folder in sorted(numbered, key=lambda d: int(d.name.split("-")[-1]), reverse=True):
        if (folder / "trainer_state.json").is_file():
            return str(folder)
        log.warning("train: %s is incomplete (killed while saving?); not resuming from it", folder)
    return None


def train_sft(
    base_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[TrainingExample],
    validation: Sequence[TrainingExample],
    spec: TrainingSpec,
    work_dir: Path,
    **overrides: Any,
) -> TrainResult:
    """Supervised LoRA fine-tune on the positive examples (targets), loss on targets only."""
    positives = [(e.prompt, e.target, e.messages) for e in train if e.positive]
    train_set = build_dataset(tokenizer, positives, spec.max_seq_len, spec.packing)
    val_set = build_dataset(
        tokenizer,
        [(e.prompt, e.target, e.messages) for e in validation if e.positive],
        spec.max_seq_len,
    )
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, lora_config(spec, overrides.pop("lora_r", None)))
    args = TrainingArguments(**_arguments(spec, work_dir, len(train_set), **overrides))
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=PadCollator(int(tokenizer.pad_token_id or 0)),
        callbacks=_callbacks(spec),
    )
    what = (
        f"SFT on {len(train_set)} sequences ({train_set.tokens} tokens), {len(val_set)} validation"
    )
    return _run(trainer, work_dir, what, len(positives))


def train_kto(
    base_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[TrainingExample],
    validation: Sequence[TrainingExample],
    spec: TrainingSpec,
    work_dir: Path,
    **overrides: Any,
) -> TrainResult:
    """KTO (TRL): desirable targets and undesirable answers (thumbs-down, no correction)."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    def rows(items: Sequence[TrainingExample]) -> Dataset:
        # The prompt as the server renders it (a conversation through the chat template),
        # so KTO learns what is served; TRL tokenizes the text itself.
        return Dataset.from_list(
            [
                {
                    "prompt": rendered_prompt(tokenizer, e),
                    "completion": e.target,
                    "label": e.positive,
                }
                for e in items
            ]
        )

    train_rows, val_rows = rows(train), rows(validation)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = lora_config(spec, overrides.pop("lora_r", None))
    args = _arguments(spec, work_dir, len(train_rows), **overrides)
    args.pop("label_names")
    trainer = KTOTrainer(
        model=model,
        ref_model=None,
        # TRL's own default is bf16 everywhere; _arguments chose what this device supports.
        args=KTOConfig(max_length=spec.max_seq_len, **args),
        train_dataset=train_rows,
        eval_dataset=val_rows,
        processing_class=tokenizer,
        peft_config=config,
        callbacks=_callbacks(spec),
    )
    undesirable = sum(not e.positive for e in train)
    what = f"KTO on {len(train_rows)} rows ({undesirable} undesirable), {len(val_rows)} validation"
    return _run(trainer, work_dir, what, len(train_rows))


def train(
    base_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    train_set: Sequence[TrainingExample],
    validation: Sequence[TrainingExample],
    spec: TrainingSpec,
    work_dir: Path,
    **overrides: Any,
) -> TrainResult:
    method = train_kto if spec.method == "kto" else train_sft
    return method(base_dir, tokenizer, train_set, validation, spec, work_dir, **overrides)
