"""The task file (``refinery.yaml``): objective, labels, data and base-model configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.exceptions import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskObjective(_Section):
    """What the model must do and how its output is read."""

    name: str
    kind: Literal["classification", "generation"]
    description: str = ""
    prompt_template: str = Field(description="Python format string with a {text} field")
    labels: list[str] = Field(default_factory=list)
    max_new_tokens: int = 16

    @model_validator(mode="after")
    def _labels_for_classification(self) -> TaskObjective:
        if self.kind == "classification" and not self.labels:
            raise ValueError("task.labels is empty; a classification task needs its label set")
        if "{text}" not in self.prompt_template:
            raise ValueError("task.prompt_template must contain '{text}'")
        return self

    def render(self, text: str) -> str:
        return self.prompt_template.format(text=text)

    def completion_for(self, label: str) -> str:
        """The target completion of a label: a leading space, as generated after the prompt."""
        return f" {label}"

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
    cooldown_minutes: float = Field(default=30, ge=0, description="quiet time after a trigger")


class TaskFile(_Section):
    """The whole task file."""

    task: TaskObjective
    data: DataSpec = Field(default_factory=DataSpec)
    base_model: BaseModelSpec = Field(default_factory=BaseModelSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)


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
