"""A LoRA version merged into its base answers as base + adapter does (the weights vLLM
serves without LoRA, refinery/deployer/merge.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from refinery.common.task import BaseModelSpec
from refinery.deployer.merge import COMPLETE, merge_adapter, merged_dir
from refinery.retrainer.base_model import build_model, train_tokenizer

SPEC = BaseModelSpec(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2)
TEXTS = [f"Ticket {i}: my order number {i * 7} never came\nTeam: shipping" for i in range(40)]


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("merge")
    tokenizer = train_tokenizer(TEXTS, SPEC.vocab_size)
    base = root / "base"
    build_model(SPEC, tokenizer, seed=0).save_pretrained(base)
    tokenizer.save_pretrained(base)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base)
    # Random A and B (not the zero B of a fresh adapter): the merge must change the weights.
    config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, target_modules="all-linear")
    get_peft_model(model, config).save_pretrained(root / "adapter")
    return base, root / "adapter"


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_weights_answer_as_base_plus_adapter(
    base_and_adapter: tuple[Path, Path], tmp_path: Path
) -> None:
    base, adapter = base_and_adapter
    out = merge_adapter(base, adapter, merged_dir(tmp_path, "refinery-model-v2"))
    assert out.name == "refinery-model-v2-merged" and (out / COMPLETE).exists()
    assert not list(tmp_path.glob(".*partial"))  # written beside it, renamed in
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    plain = AutoModelForCausalLM.from_pretrained(base)
    ids = AutoTokenizer.from_pretrained(out)(TEXTS[:3], return_tensors="pt", padding=True)
    expected = _logits(with_adapter, ids.input_ids)
    got = _logits(merged, ids.input_ids)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    # The adapter matters here: the merged model is not the base model.
    assert (got - _logits(plain, ids.input_ids)).abs().max() > 1e-2


def test_a_complete_merge_is_kept_and_a_partial_one_redone(
    base_and_adapter: tuple[Path, Path], tmp_path: Path
) -> None:
    base, adapter = base_and_adapter
    out = merged_dir(tmp_path, "refinery-model-v3")
    partial = out.with_name(f".{out.name}.partial")
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")  # a crash mid-write
    merge_adapter(base, adapter, out)
    assert not partial.exists()
    written = (out / "model.safetensors").stat().st_mtime_ns
    assert merge_adapter(base, adapter, out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == written  # not merged again
