"""Labeled text as Refinery reads and writes it: JSONL of prompt/completion pairs, or of
OpenAI chat conversations.

A line is either ``{"prompt": ..., "completion": ..., "segment": ...}`` or
``{"messages": [{"role": ..., "content": ...}, ...], "segment": ...}`` (the OpenAI
fine-tuning format). In a conversation the last assistant turn is the target; the turns
before it (system prompt and earlier turns included) are the context it answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from refinery.common.events import ChatTurn, last_user_text
from refinery.common.exceptions import ConfigError


class LabeledText(BaseModel):
    """One training or test example; ``messages`` is the conversation for chat data."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)
    segment: str | None = None
    messages: tuple[ChatTurn, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_conversation(cls, data: Any) -> Any:
        """A ``messages`` row: the last assistant turn is the completion."""
        if not isinstance(data, dict) or "messages" not in data or "completion" in data:
            return data
        turns = data["messages"]
        if not isinstance(turns, list) or not turns:
            raise ValueError("messages: must be a non-empty list of {role, content} objects")
        last = turns[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant":
            raise ValueError("messages: the last turn must be the assistant's answer (the target)")
        context = [ChatTurn.model_validate(_text_turn(t, i)) for i, t in enumerate(turns[:-1])]
        if not any(t.role == "user" for t in context):
            raise ValueError("messages: no user turn before the assistant's answer")
        return {
            **{k: v for k, v in data.items() if k != "messages"},
            "prompt": last_user_text(context),
            "completion": _text_turn(last, len(turns) - 1)["content"],
            "messages": context,
        }

    def to_line(self) -> str:
        """The example as a JSONL line, in the format it was read in."""
        if self.messages is None:
            return self.model_dump_json(exclude_none=True, exclude={"messages"})
        turns = [t.model_dump() for t in self.messages]
        turns.append({"role": "assistant", "content": self.completion})
        row: dict[str, Any] = {"messages": turns}
        if self.segment is not None:
            row["segment"] = self.segment
        return json.dumps(row, ensure_ascii=False)


def _text_turn(turn: Any, index: int) -> dict[str, Any]:
    """A turn with its content as text (OpenAI allows a list of text parts)."""
    if not isinstance(turn, dict):
        raise ValueError(f"messages.{index}: must be an object with 'role' and 'content'")
    content = turn.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise ValueError(f"messages.{index}.content: only text parts are supported")
        content = "\n".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise ValueError(f"messages.{index}.content: must be a string or a list of text parts")
    return {"role": turn.get("role"), "content": content}


def _where(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{field}: {message}" if field and not message.startswith(field) else message


def read_jsonl(path: Path) -> list[LabeledText]:
    """Read examples; a bad line fails naming the file, the line and the field."""
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
                f"{path}:{number}: {_where(exc)} (a line is {{'prompt', 'completion'}} or "
                "{'messages': [...]} ending with the assistant's answer; 'segment' optional)"
            ) from exc
    if not out:
        raise ConfigError(f"{path} holds no examples")
    return out


def write_jsonl(path: Path, examples: Iterable[LabeledText]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w") as out:
        for example in examples:
            out.write(example.to_line() + "\n")
            count += 1
    return count
