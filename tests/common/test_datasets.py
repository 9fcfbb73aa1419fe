"""Data files: prompt/completion and OpenAI chat JSONL; a bad row names file, line, field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refinery.common.datasets import LabeledText, read_jsonl, write_jsonl
from refinery.common.events import ChatTurn
from refinery.common.exceptions import ConfigError

CHAT = {
    "messages": [
        {"role": "system", "content": "Reply in one sentence."},
        {"role": "user", "content": "my parcel is late"},
        {"role": "assistant", "content": "Sorry, let me check."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "it is"}, {"type": "text", "text": "a week late"}],
        },
        {"role": "assistant", "content": "I have asked the courier to deliver it tomorrow."},
    ],
    "segment": "retail",
}


def _file(tmp_path: Path, *rows: object) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_both_formats_are_read_and_written_back_alike(tmp_path: Path) -> None:
    pair = {"prompt": "Ticket: x\nTeam:", "completion": " billing"}
    [plain, chat] = read_jsonl(_file(tmp_path, pair, CHAT))
    assert (plain.prompt, plain.completion, plain.messages) == (pair["prompt"], " billing", None)
    assert chat.completion == "I have asked the courier to deliver it tomorrow."
    assert chat.prompt == "it is\na week late"  # the last user turn
    assert chat.segment == "retail"
    assert chat.messages is not None and len(chat.messages) == 4
    assert chat.messages[0] == ChatTurn(role="system", content="Reply in one sentence.")
    again = tmp_path / "again.jsonl"
    write_jsonl(again, [plain, chat])
    assert read_jsonl(again) == [plain, chat]


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ({"prompt": "p"}, "completion: Field required"),
        ({"messages": []}, "messages: must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "the last turn must be the assistant"),
        (
            {
                "messages": [
                    {"role": "robot", "content": "hi"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "role",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "messages.0.content: only text parts",
        ),
        (
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "no user turn",
        ),
        ("{not json", "Invalid JSON"),
    ],
)
def test_a_bad_row_names_the_file_line_and_field(tmp_path: Path, row: object, says: str) -> None:
    path = _file(tmp_path, {"prompt": "fine", "completion": " ok"}, row)
    with pytest.raises(ConfigError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ")
    assert says in message
    assert "\n" not in message  # one error line


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no examples"):
        read_jsonl(_file(tmp_path))


def test_a_labeled_text_keeps_its_conversation() -> None:
    item = LabeledText.model_validate(CHAT)
    assert item.messages is not None and item.messages[-1].role == "user"
