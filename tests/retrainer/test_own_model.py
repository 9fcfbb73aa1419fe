"""A user's own pretrained model, of two architectures: bootstrapped from a Hugging Face
folder with a LoRA fine-tuned on the user's data, served by vLLM with the adapter loaded at
runtime, and retrained once from feedback."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from refinery.common.datasets import write_jsonl
from refinery.common.events import TriggerEvent
from refinery.common.kafka import ensure_topics
from refinery.common.registry import ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.demo.corpus import generate
from refinery.retrainer.base_model import train_tokenizer
from refinery.retrainer.pipeline import Retrainer
from refinery.retrainer.record import OUTCOME_TAG
from refinery.stack.vllm import vllm_process
from tests.conftest import run_cli
from tests.ports import OWN_MODEL, ports
from tests.retrainer.test_service import TASK, feedback_events, send_examples

pytestmark = pytest.mark.slow  # a stack of its own (make test-slow)

SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}


def _save_pretrained(architecture: str, folder: Path) -> Path:
    """A small model of ``architecture`` saved as a Hugging Face folder, standing in for
    one a user downloaded (random weights: nothing here is downloaded)."""
    texts = [e.prompt + e.completion for e in generate(TASK.task, 300, seed=3)]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    common = {
        **SHAPE,
        "vocab_size": len(tokenizer),
        "num_attention_heads": 4,  # head_dim 32, the smallest vLLM's CPU attention takes
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
    }
    model = (
        LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=4))
        if architecture == "llama"
        else Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2))
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _served(settings: Settings, info: VersionInfo, models_dir: Path) -> str:
    """Load ``info``'s adapter into vLLM at runtime and complete with it."""
    adapter = ModelRegistry(settings).local_copy(info, models_dir)
    url = settings.vllm_url
    loaded = httpx.post(
        f"{url}/v1/load_lora_adapter",
        json={"lora_name": info.served_name, "lora_path": str(adapter)},
        timeout=120,
    )
    assert loaded.status_code == 200, loaded.text
    done = httpx.post(
        f"{url}/v1/completions",
        json={"model": info.served_name, "prompt": "Ticket: refund me\nTeam:", "max_tokens": 3},
        timeout=120,
    )
    assert done.status_code == 200, done.text
    return str(done.json()["model"])


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_users_model_is_bootstrapped_served_with_lora_and_retrained(
    bootstrapped: Settings, tmp_path: Path, architecture: str
) -> None:
    name = f"own-{architecture}-{uuid.uuid4().hex[:6]}"
    own = ports(OWN_MODEL)
    settings = bootstrapped.model_copy(
        update={
            "registered_model": name,
            "topic_prefix": name,
            "var_dir": tmp_path / "var",
            "vllm_port": own["vllm_port"],
        }
    )
    base_folder = _save_pretrained(architecture, tmp_path / f"hf-{architecture}")
    write_jsonl(tmp_path / "train.jsonl", generate(TASK.task, 300, seed=5))
    write_jsonl(tmp_path / "golden.jsonl", generate(TASK.task, 40, seed=6))
    done = run_cli(
        settings,
        "bootstrap",
        "--base",
        str(base_folder),
        "--train",
        str(tmp_path / "train.jsonl"),
        "--golden",
        str(tmp_path / "golden.jsonl"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    registry = ModelRegistry(settings)
    champion = registry.champion()
    assert champion is not None and (champion.kind, champion.base_version) == ("lora", "1")
    base = registry.get("1")

    vllm = vllm_process(settings, registry.local_copy(base, tmp_path / "models"))
    vllm.start()
    try:
        assert _served(settings, champion, tmp_path / "models") == champion.served_name

        ensure_topics(settings)
        send_examples(settings, feedback_events(240, seed=61))
        trigger = TriggerEvent(trigger_id=f"{name}-retrain", reason="test", requested_by="cli")
        outcome = Retrainer(settings, TASK).run(trigger)
        assert outcome.version is not None, outcome.reasons
        retrained = registry.get(outcome.version)
        assert (retrained.kind, retrained.base_version) == ("lora", "1")
        run = Retrainer(settings, TASK).find_run(trigger.trigger_id)
        assert run is not None and run.data.tags[OUTCOME_TAG] in ("promoted", "rejected")
        assert _served(settings, retrained, tmp_path / "models") == retrained.served_name
    finally:
        vllm.stop()
