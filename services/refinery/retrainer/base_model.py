"""The offline base model: a byte-level BPE tokenizer and a small Llama trained from scratch.

Llama-style so vLLM serves it and PEFT LoRA adapters apply to it; small enough to train
on two CPU cores in a minute or two. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from refinery.common.datasets import LabeledText
from refinery.common.task import BaseModelSpec

log = logging.getLogger(__name__)

PAD, EOS = "<pad>", "</s>"
ROLES = ("system", "user", "assistant", "tool", "developer")
# One token per role marker, so a conversation's structure is never split or merged.
SPECIAL_TOKENS = [PAD, "<s>", EOS, *(f"<|{role}|>" for role in ROLES)]
# A real chat template with roles (Zephyr's layout): every turn ends with EOS, so the
# answer the model learns ends where vLLM stops generating. vLLM serves chat requests with
# it, and the retrainer builds training and evaluation prompts with the same template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Positions vLLM may serve; training uses spec.max_seq_len, RoPE extends beyond it.
SERVE_POSITIONS = 512


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any input encodes, no unknown token) learned from ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=SERVE_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def served_text(tokenizer: PreTrainedTokenizerFast, example: LabeledText) -> str:
    """The prompt as vLLM will render it: a conversation through the chat template."""
    if not example.messages:
        return example.prompt
    turns = [{"role": m.role, "content": m.content} for m in example.messages]
    return str(tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False))


def corpus_text(example: LabeledText) -> str:
    """All the text of an example, for learning the tokenizer's merges."""
    context = [m.content for m in example.messages] if example.messages else [example.prompt]
    return "\n".join([*context, example.completion])


def build_model(
    spec: BaseModelSpec, tokenizer: PreTrainedTokenizerFast, seed: int
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=SERVE_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class PretrainResult:
    steps: int
    epochs_done: float
    final_loss: float
    seconds: float
    examples_per_s: float


def _batches(
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[LabeledText],
    spec: BaseModelSpec,
    rng: random.Random,
) -> list[dict[str, torch.Tensor]]:
    order = list(range(len(examples)))
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), spec.batch_size):
        chunk = [examples[i] for i in order[start : start + spec.batch_size]]
        enc = tokenizer(
            [served_text(tokenizer, e) + e.completion + EOS for e in chunk],
            max_length=spec.max_seq_len,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        out.append(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": labels,
            }
        )
    return out


def pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[LabeledText],
    spec: BaseModelSpec,
    seed: int,
) -> PretrainResult:
    """Language-model the whole ticket text; stop after ``spec.epochs`` or the time budget."""
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(examples) / spec.batch_size)
    total = steps_per_epoch * spec.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        ),
    )
    model.train()
    started = time.monotonic()
    step, loss_value, seen = 0, float("nan"), 0
    for epoch in range(spec.epochs):
        for batch in _batches(tokenizer, examples, spec, rng):
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            seen += int(batch["input_ids"].shape[0])
            loss_value = loss.detach().item()
            if time.monotonic() - started > spec.max_train_seconds:
                log.warning(
                    "base model: time budget %.0fs reached at step %d", spec.max_train_seconds, step
                )
                break
        else:
            log.info("base model: epoch %d/%d loss %.4f", epoch + 1, spec.epochs, loss_value)
            continue
        break
    model.eval()
    seconds = time.monotonic() - started
    return PretrainResult(step, step / steps_per_epoch, loss_value, seconds, seen / seconds)


@torch.no_grad()
def greedy_complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 64,
) -> list[str]:
    """Greedy completions of prompt token ids (``sequence.prompt_ids``: as vLLM encodes
    them), as vLLM gives at temperature 0; batches are left-padded, on the model's device."""
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start : start + batch_size]]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        generated = model.generate(  # type: ignore[operator]
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = generated[:, width:]
        out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return out
