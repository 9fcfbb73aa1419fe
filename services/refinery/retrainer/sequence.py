"""Tokenization and sequencing: prompt + target as the model sees them, loss on the target.

The prompt is encoded the way the server encodes it: a completion prompt with the
tokenizer's own special tokens (e.g. a BOS), as vLLM's ``/v1/completions`` does; a
conversation through the model's chat template with a generation prompt, tokenized without
adding special tokens, as vLLM's ``/v1/chat/completions`` does (``prompt_ids`` is that one
rendering). The target follows without special tokens and ends with EOS, so the model
learns to stop; the loss is on the target (the last assistant turn) only.
Over-long examples lose the *start* of the prompt (the template's tail, "Team:", stays
next to the answer). Batches are padded to their longest sequence, or, with packing,
whole examples are packed into blocks of ``max_len`` (no example is split; attention is
not masked between the examples of a block, as in TRL's default packing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from refinery.common.events import ChatTurn

IGNORE = -100  # label value the loss skips


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def rendered_prompt(tokenizer: PreTrainedTokenizerBase, item: Any) -> str:
    """The prompt text the server renders for ``item`` (its ``prompt``, or its ``messages``
    through the chat template), for trainers that tokenize text themselves."""
    messages = getattr(item, "messages", None)
    if not messages:
        return str(item.prompt)
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return str(text)


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, messages: Sequence[ChatTurn] | None = None
) -> list[int]:
    """The token ids vLLM feeds the model for this prompt (or conversation, if given)."""
    if messages:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
    return list(tokenizer(prompt)["input_ids"])


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    target: str,
    max_len: int,
    messages: Sequence[ChatTurn] | None = None,
) -> Encoded:
    """One training sequence: the served prompt's ids, then the target's, loss on the target."""
    prompt_ids_ = prompt_ids(tokenizer, prompt, messages)
    target_ids: list[int] = tokenizer(target, add_special_tokens=False)["input_ids"]
    target_ids = [*target_ids, tokenizer.eos_token_id][: max_len - 1]
    prompt_ids_ = prompt_ids_[-(max_len - len(target_ids)) :]
    return Encoded(
        input_ids=prompt_ids_ + target_ids,
        labels=[IGNORE] * len(prompt_ids_) + target_ids,
    )


def pack(items: Sequence[Encoded], max_len: int) -> list[Encoded]:
    """Greedy first-fit in input order: whole examples into blocks of at most ``max_len``."""
    blocks: list[Encoded] = []
    ids: list[int] = []
    labels: list[int] = []
    for item in items:
        if ids and len(ids) + len(item.input_ids) > max_len:
            blocks.append(Encoded(ids, labels))
            ids, labels = [], []
        ids, labels = ids + item.input_ids, labels + item.labels
    if ids:
        blocks.append(Encoded(ids, labels))
    return blocks


class SequenceDataset(torch.utils.data.Dataset[Encoded]):
    def __init__(self, items: Sequence[Encoded]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Encoded:
        return self.items[index]

    @property
    def tokens(self) -> int:
        return sum(len(i.input_ids) for i in self.items)


def build_dataset(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[tuple[str, str, Sequence[ChatTurn] | None]],
    max_len: int,
    packing: bool = False,
) -> SequenceDataset:
    """Encoded (prompt, target, conversation or None) items, padded per batch or packed."""
    encoded = [encode(tokenizer, p, target, max_len, messages) for p, target, messages in items]
    return SequenceDataset(pack(encoded, max_len) if packing else encoded)


class PadCollator:
    """Right-pads a batch to its longest sequence; padding is masked and not in the loss."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: Sequence[Encoded]) -> dict[str, Any]:
        width = max(len(item.input_ids) for item in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            n = len(item.input_ids)
            ids[row, :n] = torch.tensor(item.input_ids)
            labels[row, :n] = torch.tensor(item.labels)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
