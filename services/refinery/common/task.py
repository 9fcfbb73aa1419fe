"""The task file (``refinery.yaml``): objective, labels, data, base model, drift, cleaning,
training and gating."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from refinery.common.exceptions import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# classification: the completion is one label; generation: free text after a prompt;
# chat: free text answering OpenAI-style messages (scored exactly like generation).
TaskKind = Literal["classification", "generation", "chat"]

# What the gate decides on, each a per-item score on a 0-1 scale (refinery/retrainer/gate.py).
GateMetric = Literal["accuracy", "chrf", "bleu", "exact_match", "semantic"]

DEFAULT_METRIC: dict[TaskKind, GateMetric] = {
    "classification": "accuracy",
    "generation": "chrf",
    "chat": "chrf",
}


def metric_error(kind: TaskKind, metric: GateMetric) -> str | None:
    """Why ``metric`` cannot judge a ``kind`` task, or None when it can.

    A classification task serves a label, which is right or wrong, so accuracy is its only
    metric; free text has no label to be accurate about.
    """
    if kind == "classification" and metric != "accuracy":
        return (
            f"gate.metric {metric!r} does not fit task.kind 'classification', which is judged "
            "on the label it serves; set gate.metric: accuracy or leave it out"
        )
    if kind != "classification" and metric == "accuracy":
        return (
            f"gate.metric 'accuracy' needs task.kind 'classification', not {kind!r}; set "
            "gate.metric to chrf, bleu, exact_match or semantic, or leave it out for chrf"
        )
    return None


class TaskObjective(_Section):
    """What the model must do and how its output is read."""

    name: str
    kind: TaskKind
    description: str = ""
    prompt_template: str = Field(
        default="{text}",
        description="Python format string with a {text} field; optional only for chat",
    )
    labels: list[str] = Field(default_factory=list)
    max_new_tokens: int = 16

    @model_validator(mode="after")
    def _fits_kind(self) -> TaskObjective:
        if self.kind == "classification" and not self.labels:
            raise ValueError("task.labels is empty; a classification task needs its label set")
        if self.kind == "chat":
            return self  # the messages carry the text; a template is optional
        if "prompt_template" not in self.model_fields_set:
            raise ValueError(
                f"task.prompt_template is missing; a {self.kind} task needs one with '{{text}}'"
            )
        if "{text}" not in self.prompt_template:
            raise ValueError("task.prompt_template must contain '{text}'")
        return self

    def render(self, text: str) -> str:
        return self.prompt_template.format(text=text)

    def completion_for(self, label: str) -> str:
        """The target completion of a label: a leading space, as generated after the prompt."""
        return f" {label}"

    def correction_target(self, answer: str) -> str:
        """A user's correction as the completion the model should have given: the one
        normalisation, shared by the gateway, the CLI and the review queue.

        A label must be one of ``labels`` (any case; raises ValueError naming them) and
        becomes ``" <label>"``; free text after a prompt gets one leading space, as the
        model generates it after the template; a chat answer is the assistant's whole
        message, without surrounding space. An empty answer raises ValueError.
        """
        text = answer.strip()
        if not text:
            raise ValueError("the correction is empty; send the right answer, or no correction")
        if self.kind == "classification":
            label = self.parse_label(text)
            if label is None or len(text.split()) > 1:
                raise ValueError(
                    f"correction {answer!r} is not a label of this task; "
                    f"one of {', '.join(self.labels)}"
                )
            return self.completion_for(label)
        return text if self.kind == "chat" else f" {text}"

    def parse_label(self, completion: str) -> str | None:
        """The label a completion names (its first word), or None when it names none."""
        words = completion.strip().split()
        first = words[0].strip(".,:;!").lower() if words else ""
        return first if first in self.labels else None


class DataSpec(_Section):
    """Where seed data comes from when the user gives none."""

    demo_seed: int = 7
    demo_train_size: int = 1500
    demo_golden_size: int = 300


class BaseModelSpec(_Section):
    """Shape and training budget of the small base model built offline by bootstrap."""

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    max_seq_len: int = 128
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 3e-3
    max_train_seconds: float = 240


class DriftSpec(_Section):
    """When the monitor calls traffic drifted, and when drift becomes a retrain trigger."""

    window_size: int = Field(default=200, ge=20, description="predictions per current window")
    window_minutes: float = Field(default=10, gt=0, description="or this long, if sooner")
    reference_size: int = Field(default=400, ge=40, description="predictions after a promotion")
    p_value: float = Field(
        default=0.001,
        gt=0,
        lt=1,
        description="false-alarm chance of a stable window, all feature columns together",
    )
    thumbs_down_p_value: float = Field(default=0.001, gt=0, lt=1)
    persist_windows: int = Field(default=2, ge=1, description="drifted windows in a row")
    min_examples: int = Field(default=100, ge=0, description="labeled examples since training")
    min_new_labels: int = Field(
        default=200,
        ge=0,
        description="thumbs-up or corrections since the drift began: data to learn the shift from",
    )
    cooldown_minutes: float = Field(default=30, ge=0, description="quiet time after a trigger")
    refinement_rounds: int = Field(
        default=1,
        ge=0,
        le=5,
        description="more rounds when a promoted challenger's thumbs-down rate stays above "
        "the one before the drift (each after min_new_labels of its own ratings)",
    )
    retries_after_rejection: int = Field(
        default=1,
        ge=0,
        le=5,
        description="drift rounds again, before the cooldown ends, when the challenger is "
        "rejected and the drift persists: each once the episode's labels have doubled",
    )


class CleaningSpec(_Section):
    """What the retrainer drops or rewrites before training (refinery/retrainer/clean.py)."""

    max_prompt_chars: int = Field(default=2000, gt=0)
    max_target_chars: int = Field(default=500, gt=0)
    min_alnum_share: float = Field(
        default=0.5, ge=0, le=1, description="below this share of letters/digits: garbage"
    )
    scrub_pii: bool = True


class FeedbackSpec(_Section):
    """How far feedback is trusted: no API key or user steers a trigger, a training set or
    a test set (refinery/common/shares.py, refinery/retrainer/sources.py). A key is an API
    key's fingerprint; a user a (key, user name) pair. One key or user alone is never
    capped: there is no one else to protect it from."""

    max_key_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="largest share of rated examples, and of a trigger's new labels, from "
        "one API key (1: no cap, the default: one app's key usually sends nearly all; set "
        "it below 1 when several apps of comparable volume rate)",
    )
    max_user_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="largest share of rated examples from one named user (1: no cap, the "
        "default; e.g. 0.1 where user names are real people; ratings without a user name "
        "are never capped: they name no one)",
    )
    hold_min_contradictions: int = Field(
        default=3,
        ge=1,
        description="a correction that this many independent users contradict (and more "
        "than support it) is held for review, not trained on",
    )


class SearchSpec(_Section):
    """An optional small hyperparameter search; the best on validation loss goes to the gate."""

    enabled: bool = False
    budget_seconds: float = Field(default=300, gt=0)
    learning_rate: list[float] = Field(default_factory=lambda: [1e-3, 3e-3])
    lora_r: list[int] = Field(default_factory=lambda: [8, 16])
    epochs: list[int] = Field(default_factory=lambda: [3])


class TrainingSpec(_Section):
    """How a challenger is fine-tuned: LoRA on the champion's base model."""

    method: Literal["sft", "kto"] = Field(
        default="sft", description="kto also learns from thumbs-down without a correction"
    )
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        default=None,
        description="modules LoRA adapts; none: PEFT's default for the base's architecture",
    )
    learning_rate: float = Field(default=3e-3, gt=0)
    feedback_weight: int = Field(
        default=1,
        ge=1,
        le=20,
        description="times each example rated since the drift began is seen per epoch, "
        "against once for the replayed seed data and older feedback",
    )
    max_feedback_ratio: float | None = Field(
        default=None,
        gt=0,
        description="fewer repeats when the weighted recent feedback would outnumber the "
        "replayed examples by more than this (a later round costs what the first did); "
        "none: always feedback_weight",
    )
    epochs: int = Field(default=4, ge=1)
    batch_size: int = Field(default=32, ge=2)
    max_seq_len: int = Field(default=128, ge=8)
    packing: bool = Field(default=False, description="pack sequences instead of padding")
    validation_share: float = Field(default=0.1, gt=0, lt=0.5)
    early_stopping_patience: int = Field(default=2, ge=1, description="evaluations")
    evals_per_epoch: int = Field(default=2, ge=1)
    max_train_seconds: float = Field(default=600, gt=0)
    seed: int = 0
    search: SearchSpec = Field(default_factory=SearchSpec)


class GateSpec(_Section):
    """When a challenger replaces the champion (the gate fails closed)."""

    test_share: float = Field(
        default=0.2, gt=0, lt=1, description="newest share of rated traffic: the test split"
    )
    min_test_examples: int = Field(default=30, ge=1)
    metric: GateMetric | None = Field(
        default=None,
        description="what the gate decides on, as a mean per-item score on a 0-1 scale: "
        "accuracy (classification only), chrf, bleu, exact_match or semantic (embedding "
        "cosine); unset: accuracy for classification, chrf for generation and chat",
    )
    min_improvement: float = Field(
        default=0.02, ge=0, le=1, description="on recent traffic, in gate.metric (0-1 scale)"
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    golden_tolerance: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="largest drop allowed on the golden set, in gate.metric (0-1 scale)",
    )
    bootstrap_samples: int = Field(default=2000, ge=100)


class CanarySpec(_Section):
    """After the gate: the challenger answers a share of live traffic, and a sequential test
    on users' thumbs promotes it or rolls it back (refinery/retrainer/canary.py)."""

    share: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="share of users (sticky per user) the challenger answers beside the "
        "champion; 0: no canary, the gate's pass promotes at once",
    )
    mode: Literal["live", "shadow"] = Field(
        default="live",
        description="live: the share of users gets the challenger's answers; shadow: they "
        "get the champion's, the challenger answers the same requests unseen and is judged "
        "by what their thumbs say of the champion's answer (for tasks where users must not "
        "see a canary)",
    )
    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="chance that the always-valid interval ever misses the true difference",
    )
    margin: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="promote when the canary's thumbs-up rate is not below the champion's "
        "by more than this; roll back when it is below by more",
    )
    min_per_arm: int = Field(default=30, ge=1, description="ratings each arm needs first")
    max_per_arm: int = Field(
        default=2000, ge=1, description="canary ratings after which an undecided canary ends"
    )
    max_minutes: float = Field(
        default=60.0, gt=0, description="time after which an undecided canary ends"
    )
    effect_scale: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="the difference in thumbs-up rate the test is tuned to detect fastest",
    )


class TaskFile(_Section):
    """The whole task file."""

    task: TaskObjective
    data: DataSpec = Field(default_factory=DataSpec)
    base_model: BaseModelSpec = Field(default_factory=BaseModelSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    cleaning: CleaningSpec = Field(default_factory=CleaningSpec)
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    canary: CanarySpec = Field(default_factory=CanarySpec)

    @model_validator(mode="after")
    def _gate_metric_fits_task(self) -> TaskFile:
        """Fill in the kind's default gate metric, and refuse one that cannot judge the task."""
        if self.gate.metric is None:
            # A copy: a GateSpec instance passed in may be shared with another task file.
            self.gate = self.gate.model_copy(update={"metric": DEFAULT_METRIC[self.task.kind]})
            return self
        error = metric_error(self.task.kind, self.gate.metric)
        if error is not None:
            raise ValueError(error)
        return self


def load_task(path: Path) -> TaskFile:
    """Read and validate the task file, naming the file and field on error."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"task file {path} does not exist; set REFINERY_TASK_FILE") from None
    try:
        return TaskFile.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"task file {path} is invalid: {exc}") from exc
