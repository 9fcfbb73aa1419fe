"""The task file: loud, precise errors; labels parsed from generated text."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.exceptions import ConfigError
from services.common.settings import REPO_ROOT
from services.common.task import load_task


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
