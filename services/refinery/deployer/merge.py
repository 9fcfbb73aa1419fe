"""A LoRA version folded into its base weights: a plain model folder vLLM serves without
LoRA, so a request costs what one to the base model costs (runtime LoRA cost 1.98x the
base per request here, bench/gateway.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

COMPLETE = ".complete"


def merged_dir(models_dir: Path, served_name: str) -> Path:
    """Where the merged weights of ``served_name`` live (versions are immutable: one merge
    per version, kept for a rollback)."""
    return models_dir / f"{served_name}-merged"


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Write base + adapter as one model to ``out_dir`` (once: a complete folder is kept).
    Written beside it first and renamed in, so a crash never leaves a folder vLLM would load
    half of."""
    if (out_dir / COMPLETE).exists():
        return out_dir
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    with torch.no_grad():
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(staging)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    (out_dir / COMPLETE).touch()
    return out_dir
