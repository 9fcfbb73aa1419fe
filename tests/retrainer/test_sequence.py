"""Tokenization and sequencing with the offline base model's tokenizer."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from refinery.common.datasets import LabeledText
from refinery.common.events import ChatTurn
from refinery.retrainer.base_model import served_text, train_tokenizer
from refinery.retrainer.sequence import IGNORE, PadCollator, encode, pack, prompt_ids

PROMPT = "Ticket: my thermostat keeps going offline since the update\nTeam:"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    texts = [PROMPT + " technical", "Ticket: refund my order\nTeam: billing"] * 20
    return train_tokenizer(texts, vocab_size=300)


def test_loss_is_on_the_target_and_eos_only(tokenizer: PreTrainedTokenizerFast) -> None:
    enc = encode(tokenizer, PROMPT, " technical", max_len=128)
    n_prompt = len(tokenizer(PROMPT)["input_ids"])
    assert enc.labels[:n_prompt] == [IGNORE] * n_prompt
    target = enc.labels[n_prompt:]
    assert target[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(target[:-1]) == " technical"
    assert enc.input_ids[n_prompt:] == target


def test_truncation_drops_the_start_of_the_prompt(tokenizer: PreTrainedTokenizerFast) -> None:
    enc = encode(tokenizer, PROMPT, " technical", max_len=12)
    assert len(enc.input_ids) == 12
    text = tokenizer.decode(enc.input_ids)
    assert text.endswith("Team: technical</s>") and not text.startswith("Ticket")


def test_packing_keeps_examples_whole(tokenizer: PreTrainedTokenizerFast) -> None:
    items = [encode(tokenizer, PROMPT, " technical", 128) for _ in range(5)]
    size = len(items[0].input_ids)
    blocks = pack(items, max_len=size * 2 + 1)
    assert [len(b.input_ids) for b in blocks] == [size * 2, size * 2, size]
    assert sum(label != IGNORE for b in blocks for label in b.labels) == sum(
        label != IGNORE for i in items for label in i.labels
    )


def test_padding_is_masked_and_not_learned(tokenizer: PreTrainedTokenizerFast) -> None:
    short = encode(tokenizer, "Ticket: hi\nTeam:", " billing", 128)
    long = encode(tokenizer, PROMPT, " technical", 128)
    batch = PadCollator(tokenizer.pad_token_id)([short, long])
    n = len(short.input_ids)
    assert batch["input_ids"].shape == (2, len(long.input_ids))
    assert batch["attention_mask"][0, n:].sum() == 0
    assert (batch["labels"][0, n:] == IGNORE).all()
    assert (batch["input_ids"][0, n:] == tokenizer.pad_token_id).all()


def test_a_conversation_goes_through_the_chat_template_with_roles(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    messages = [
        ChatTurn(role="system", content="Route tickets."),
        ChatTurn(role="user", content="refund my order"),
        ChatTurn(role="assistant", content="billing"),
        ChatTurn(role="user", content="and my parcel"),
    ]
    ids = prompt_ids(tokenizer, "and my parcel", messages)
    role_ids = {r: tokenizer.convert_tokens_to_ids(f"<|{r}|>") for r in ("system", "user")}
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert ids.count(role_ids["user"]) == 2 and ids.count(role_ids["system"]) == 1
    assert ids.count(assistant) == 2  # the earlier answer, and the generation prompt
    assert ids.count(tokenizer.eos_token_id) == 4  # every turn ends with EOS
    assert tokenizer.decode(ids).endswith("<|assistant|>\n")
    enc = encode(tokenizer, "and my parcel", "shipping", max_len=128, messages=messages)
    assert enc.input_ids[: len(ids)] == ids
    assert enc.labels[: len(ids)] == [IGNORE] * len(ids)
    assert tokenizer.decode(enc.labels[len(ids) : -1]) == "shipping"
    assert enc.labels[-1] == tokenizer.eos_token_id


def test_the_base_model_pretrains_on_the_prompt_vllm_serves(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    row = LabeledText.model_validate(
        {
            "messages": [
                {"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": "my hub is offline"},
                {"role": "assistant", "content": "Restart the hub."},
            ]
        }
    )
    served = tokenizer(served_text(tokenizer, row))["input_ids"]
    assert served == prompt_ids(tokenizer, row.prompt, row.messages)
    plain = LabeledText(prompt=PROMPT, completion=" technical")
    assert served_text(tokenizer, plain) == PROMPT
