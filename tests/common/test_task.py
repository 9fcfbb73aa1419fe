"""The task file: loud, precise errors; labels parsed from generated text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from refinery.common.exceptions import ConfigError
from refinery.common.settings import REPO_ROOT
from refinery.common.task import TaskObjective, load_task


def test_repo_task_file_loads() -> None:
    task = load_task(REPO_ROOT / "refinery.yaml")
    assert task.task.kind == "classification"
    assert task.task.render("hello") == "Ticket: hello\nTeam:"


def test_missing_task_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REFINERY_TASK_FILE"):
        load_task(tmp_path / "nope.yaml")


def test_classification_without_labels_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("task: {name: t, kind: classification, prompt_template: 'Q: {text}'}\n")
    with pytest.raises(ConfigError, match="label set"):
        load_task(path)


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("task: {name: t, kind: generation, prompt_template: '{text}', lables: [a]}\n")
    with pytest.raises(ConfigError, match="lables"):
        load_task(path)


@pytest.mark.parametrize(
    ("completion", "label"),
    [
        (" billing", "billing"),
        (" Billing.", "billing"),
        (" shipping team", "shipping"),
        (" nonsense", None),
        ("", None),
    ],
)
def test_parse_label(completion: str, label: str | None) -> None:
    assert load_task(REPO_ROOT / "refinery.yaml").task.parse_label(completion) == label


def _task_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


def test_gate_metric_defaults_by_task_kind(tmp_path: Path) -> None:
    assert load_task(REPO_ROOT / "refinery.yaml").gate.metric == "accuracy"
    generation = "task: {name: t, kind: generation, prompt_template: 'Q: {text}'}\n"
    assert load_task(_task_file(tmp_path, generation)).gate.metric == "chrf"
    chat = load_task(_task_file(tmp_path, "task: {name: t, kind: chat}\n"))
    assert chat.gate.metric == "chrf"
    assert chat.task.prompt_template == "{text}"  # optional for chat only
    semantic = generation + "gate: {metric: semantic}\n"
    assert load_task(_task_file(tmp_path, semantic)).gate.metric == "semantic"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "task: {name: t, kind: generation, prompt_template: '{text}'}\n"
            "gate: {metric: accuracy}\n",
            "gate.metric 'accuracy' needs task.kind 'classification', not 'generation'",
        ),
        (
            "task: {name: t, kind: chat}\ngate: {metric: accuracy}\n",
            "gate.metric 'accuracy' needs task.kind 'classification', not 'chat'",
        ),
        (
            "task: {name: t, kind: classification, prompt_template: '{text}', labels: [a]}\n"
            "gate: {metric: chrf}\n",
            "gate.metric 'chrf' does not fit task.kind 'classification'",
        ),
        ("task: {name: t, kind: generation}\n", "task.prompt_template is missing"),
        (
            "task: {name: t, kind: generation, prompt_template: '{text}'}\ngate: {metric: rouge}\n",
            "gate.metric",
        ),
        (
            "task: {name: t, kind: generation, prompt_template: '{text}'}\n"
            "gate: {golden_tolerance: 2}\n",
            "gate.golden_tolerance",
        ),
    ],
)
def test_wrong_gate_metric_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_task(_task_file(tmp_path, text))


def test_a_correction_is_normalised_one_way_for_each_kind() -> None:
    triage = TaskObjective(
        name="t", kind="classification", prompt_template="{text}", labels=["billing", "returns"]
    )
    assert triage.correction_target("  Billing. ") == " billing"
    with pytest.raises(ValueError, match="not a label of this task; one of billing, returns"):
        triage.correction_target("shipping")
    with pytest.raises(ValueError, match="not a label"):
        triage.correction_target("billing or returns")
    reply = TaskObjective(name="r", kind="generation", prompt_template="{text}\nReply:")
    assert reply.correction_target("We will refund you. ") == " We will refund you."
    chat = TaskObjective(name="c", kind="chat")
    assert chat.correction_target("  We will refund you.\n") == "We will refund you."
    with pytest.raises(ValueError, match="empty"):
        chat.correction_target("   ")
