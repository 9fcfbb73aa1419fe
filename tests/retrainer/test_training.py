"""LoRA training on the offline base architecture: SFT resumes from its checkpoint, KTO runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from refinery.common.task import BaseModelSpec, TrainingSpec
from refinery.retrainer.base_model import build_model, greedy_complete, train_tokenizer
from refinery.retrainer.examples import TrainingExample
from refinery.retrainer.training import mixed_precision, train_kto, train_sft

SPEC = BaseModelSpec(
    vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2
)


def data(n: int) -> list[TrainingExample]:
    labels = ["billing", "shipping", "technical"]
    return [
        TrainingExample(
            prompt=f"Ticket: problem number {i} with my {labels[i % 3]} thing\nTeam:",
            target=f" {labels[i % 3]}",
            positive=i % 5 != 0,
            source="correction" if i % 5 else "thumbs_down",
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreTrainedTokenizerFast]:
    texts = [e.prompt + e.target for e in data(60)]
    tokenizer = train_tokenizer(texts, SPEC.vocab_size)
    out = tmp_path_factory.mktemp("base")
    build_model(SPEC, tokenizer, seed=0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, tokenizer


def test_sft_saves_an_adapter_and_a_second_call_resumes(
    base: tuple[Path, PreTrainedTokenizerFast], tmp_path: Path
) -> None:
    base_dir, tokenizer = base
    spec = TrainingSpec(epochs=2, batch_size=8, evals_per_epoch=2, lora_r=8, lora_alpha=16)
    first = train_sft(base_dir, tokenizer, data(64), data(16), spec, tmp_path)
    assert (first.adapter_dir / "adapter_config.json").is_file()
    assert first.resumed_from is None and first.steps > 0
    # The rate counts examples: 51 positives an epoch in 7 batches of 8, not 7 x 8 = 56.
    positives = sum(e.positive for e in data(64))
    assert positives == 51
    examples = first.examples_per_s * first.seconds
    assert examples == pytest.approx(first.steps / 7 * positives)
    again = train_sft(base_dir, tokenizer, data(64), data(16), spec, tmp_path)
    assert again.resumed_from is not None and again.steps == first.steps


def test_kto_trains_on_desirable_and_undesirable_examples(
    base: tuple[Path, PreTrainedTokenizerFast], tmp_path: Path
) -> None:
    base_dir, tokenizer = base
    spec = TrainingSpec(method="kto", epochs=1, batch_size=8, lora_r=8, lora_alpha=16)
    result = train_kto(base_dir, tokenizer, data(48), data(16), spec, tmp_path)
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert result.steps > 0


def test_a_checkpoint_killed_while_saving_is_not_resumed_from(tmp_path: Path) -> None:
    from refinery.retrainer.training import _last_checkpoint

    assert _last_checkpoint(tmp_path) is None
    for step, complete in ((5, True), (9, False)):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert _last_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "checkpoint-5")


class _ModelElsewhere:
    """Stands in for a model on an accelerator this machine lacks (``meta``): records where
    its inputs were, and answers with token id 0."""

    device = torch.device("meta")

    def __init__(self) -> None:
        self.inputs_on: list[torch.device] = []

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: Any) -> Any:
        self.inputs_on += [input_ids.device, attention_mask.device]
        rows, width = input_ids.shape
        return torch.zeros((rows, width + kw["max_new_tokens"]), dtype=torch.long)


def test_generation_puts_the_prompts_on_the_models_device(
    base: tuple[Path, PreTrainedTokenizerFast],
) -> None:
    _, tokenizer = base
    model = _ModelElsewhere()
    prompts = [[5, 6, 7], [8], [9, 10]]
    out = greedy_complete(model, tokenizer, prompts, max_new_tokens=2, batch_size=2)  # type: ignore[arg-type]
    assert len(out) == 3
    assert model.inputs_on == [torch.device("meta")] * 4  # two batches, ids and mask each


def test_training_uses_bf16_only_on_a_gpu_that_has_it() -> None:
    assert mixed_precision(cuda=False, bf16_supported=False) == {"bf16": False, "fp16": False}
    assert mixed_precision(cuda=True, bf16_supported=True) == {"bf16": True, "fp16": False}
    assert mixed_precision(cuda=True, bf16_supported=False) == {"bf16": False, "fp16": False}
