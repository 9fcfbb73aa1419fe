"""vLLM serves the bootstrapped champion, and PEFT LoRA adapters load at runtime."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import mlflow
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from refinery.common.datasets import read_jsonl
from refinery.common.exceptions import ConfigError
from refinery.common.registry import ModelRegistry
from refinery.common.settings import Settings
from refinery.common.task import load_task
from refinery.retrainer.base_model import greedy_complete
from refinery.retrainer.sequence import prompt_ids
from refinery.stack.vllm import vllm_python


def _complete(settings: Settings, model: str, prompts: list[str], max_tokens: int) -> list[str]:
    resp = httpx.post(
        f"{settings.vllm_url}/v1/completions",
        json={"model": model, "prompt": prompts, "max_tokens": max_tokens, "temperature": 0},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
    return [c["text"] for c in choices]


@pytest.fixture(scope="module")
def champion_dir(full_stack: Settings) -> Path:
    """The base vLLM serves (the champion itself, unless a test promoted a LoRA on it)."""
    registry = ModelRegistry(full_stack)
    champion = registry.champion()
    assert champion is not None
    return registry.local_copy(registry.serving_base(champion), full_stack.models_dir)


@pytest.fixture(scope="module")
def golden_prompts(full_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    champion = ModelRegistry(full_stack).champion()
    assert champion is not None
    mlflow.set_tracking_uri(full_stack.mlflow_uri)
    path = mlflow.artifacts.download_artifacts(
        champion.tags["golden_uri"], dst_path=str(tmp_path_factory.mktemp("golden"))
    )
    return [e.prompt for e in read_jsonl(Path(path))][:40]


def test_vllm_serves_the_bootstrapped_model(
    full_stack: Settings, champion_dir: Path, golden_prompts: list[str]
) -> None:
    models = httpx.get(f"{full_stack.vllm_url}/v1/models", timeout=10).json()
    assert full_stack.served_model_name in [m["id"] for m in models["data"]]

    task = load_task(full_stack.task_file).task
    served = _complete(
        full_stack, full_stack.served_model_name, golden_prompts, task.max_new_tokens
    )
    model = AutoModelForCausalLM.from_pretrained(champion_dir)
    tokenizer = AutoTokenizer.from_pretrained(champion_dir)
    ids = [prompt_ids(tokenizer, p) for p in golden_prompts]
    local = greedy_complete(model, tokenizer, ids, task.max_new_tokens)
    served_labels = [task.parse_label(s) for s in served]
    agreement = sum(
        a == b for a, b in zip(served_labels, [task.parse_label(x) for x in local], strict=True)
    )
    # Same weights, greedy: the labels agree (float summation order may flip a near-tie).
    assert agreement >= 0.9 * len(golden_prompts), (served[:5], local[:5])
    assert all(label is not None for label in served_labels[:10])


def _make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        init_lora_weights=False,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_lora_adapter_loads_at_runtime_and_changes_output(
    full_stack: Settings, champion_dir: Path, golden_prompts: list[str], tmp_path: Path
) -> None:
    adapter = _make_adapter(champion_dir, tmp_path / "adapter", seed=3)
    url = full_stack.vllm_url
    prompts = golden_prompts[:16]
    before = _complete(full_stack, full_stack.served_model_name, prompts, 4)

    loaded = httpx.post(
        f"{url}/v1/load_lora_adapter",
        json={"lora_name": "test-lora-v1", "lora_path": str(adapter)},
        timeout=60,
    )
    assert loaded.status_code == 200, loaded.text
    again = httpx.post(
        f"{url}/v1/load_lora_adapter",
        json={"lora_name": "test-lora-v1", "lora_path": str(adapter)},
        timeout=60,
    )
    assert again.status_code == 400  # names are immutable: a new version needs a new name

    with_lora = _complete(full_stack, "test-lora-v1", prompts, 4)
    assert with_lora != before
    assert _complete(full_stack, full_stack.served_model_name, prompts, 4) == before

    unloaded = httpx.post(
        f"{url}/v1/unload_lora_adapter", json={"lora_name": "test-lora-v1"}, timeout=60
    )
    assert unloaded.status_code == 200, unloaded.text
    gone = httpx.post(
        f"{url}/v1/completions",
        json={"model": "test-lora-v1", "prompt": prompts[0], "max_tokens": 2},
        timeout=60,
    )
    assert gone.status_code == 404


def test_vllm_spins_briefly_after_a_message_on_the_cpu(full_stack: Settings) -> None:
    """The plugin limits vLLM's spin after each message in its engine core and its worker
    (refinery/vllm_plugin/spin.py); bench/vllm_spin.py measures what that saves."""
    if full_stack.vllm_backend != "cpu":
        pytest.skip("the limit applies on the CPU backend only")
    log = (full_stack.log_dir / "vllm.log").read_text(errors="replace")
    since_start = log[log.rfind("\n--- ") :]
    told = [line for line in since_start.splitlines() if "readers spin 0.010 s" in line]
    assert any("EngineCore" in line for line in told), since_start[-3000:]
    assert any("Worker" in line for line in told), since_start[-3000:]


def test_vllm_runs_from_the_configured_venv_or_from_a_python_that_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REFINERY_VLLM_PYTHON where set (a venv of its own here); else the deployer's own
    python in vLLM's image; a python without vLLM is refused with the way out."""
    venv_python = Settings().vllm_python
    assert venv_python is not None and vllm_python(Settings()) == venv_python
    with pytest.raises(ConfigError, match="make setup"):
        vllm_python(Settings(vllm_python=tmp_path / "missing"))
    with pytest.raises(ConfigError, match="make setup"):  # the tests' python has no vLLM
        vllm_python(Settings(vllm_python=None))
    plugin_dir = tmp_path / "site"  # a python whose path has vLLM, as the image's has
    (plugin_dir / "vllm").mkdir(parents=True)
    (plugin_dir / "vllm" / "__init__.py").touch()
    monkeypatch.syspath_prepend(str(plugin_dir))
    assert vllm_python(Settings(vllm_python=None)) == Path(sys.executable)
