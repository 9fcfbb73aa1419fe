"""Labeled text as Refinery reads and writes it: JSONL lines of prompt, completion, segment."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.exceptions import ConfigError


class LabeledText(BaseModel):
    """One training or test example."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)
    segment: str | None = None


def read_jsonl(path: Path) -> list[LabeledText]:
    """Read examples, naming the file and line of the first bad one."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(LabeledText.model_validate_json(line))
        except ValidationError as exc:
            raise ConfigError(
                f"{path}:{number} is not a JSON object with string 'prompt' and "
                f"'completion' (optional 'segment'): {exc.errors()[0]['msg']}"
            ) from exc
    if not out:
        raise ConfigError(f"{path} holds no examples")
    return out


def write_jsonl(path: Path, examples: Iterable[LabeledText]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w") as out:
        for example in examples:
            out.write(example.model_dump_json(exclude_none=True) + "\n")
            count += 1
    return count
