"""Drift between a reference window and a current window of traffic (Evidently 0.7).

Per prediction we keep a few features: prompt and completion length and word count, the
share of prompt words outside the reference vocabulary (new product names show up here
first), latency, token counts, segment and the predicted label. Numeric columns get a
two-sample Kolmogorov-Smirnov test in Evidently; categorical ones a chi-square test of
homogeneity on the 2 x K table of counts (scipy: Evidently's chi-square divides by the
reference frequency, which is zero for a category new in the current window, exactly the
case that matters); the thumbs-down rate a one-sided two-proportion z-test. All are
p-values. ``p_value`` is the chance that a stable window alarms on any feature column:
each of the n columns is tested at ``p_value / n`` (Bonferroni), so adding a feature does
not add false alarms. The thumbs-down test has its own threshold.

Free text (generation and chat tasks) has no label to count: its categorical column is the
kind of answer (empty, refusal, answer), and the meaning of prompts and answers is
compared through sentence embeddings (all-MiniLM-L6-v2, offline) with Evidently's
embedding drift: a classifier learns to tell reference from current rows, and a ROC AUC
above ``EMBEDDING_AUC`` is drift (stable windows measured 0.41-0.60 on the demo's reply
traffic, a shift to the new product line 0.91 for prompts and 1.0 for answers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import EmbeddingsDrift
from evidently.metrics.embeddings import ModelDriftMethod
from scipy.stats import chi2_contingency, ks_2samp

from refinery.common.events import DriftMetric, PredictionEvent
from refinery.common.task import TaskObjective

NUMERIC = (
    "prompt_chars",
    "prompt_words",
    "prompt_oov_share",
    "completion_chars",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
)
CATEGORICAL = ("segment", "label")
FREE_TEXT_CATEGORICAL = ("segment", "answer_kind")
EMBEDDINGS = ("prompt_embedding", "completion_embedding")
EMBEDDING_AUC = 0.7
THUMBS_DOWN = "thumbs_down_rate"
TEXT_KEPT = 512  # characters of prompt and answer a row keeps for the embeddings
# Openings of answers that decline: their share is a quality signal of its own.
REFUSALS = ("i can't", "i cannot", "i am unable", "i'm unable", "sorry, i can", "as an ai")


HIGHER_IS_DRIFT = ("embedding_classifier_auc",)  # scores that alarm above, not below


def alarm_ratio(metric: DriftMetric) -> float:
    """How far a test is from alarming, the same way for every method: below 1 drifted."""
    if metric.method in HIGHER_IS_DRIFT:
        return metric.threshold / metric.score if metric.score > 0 else math.inf
    return metric.score / metric.threshold


def describe(metric: DriftMetric) -> str:
    """``p=0.0001 (< 0.001)`` for a p-value, ``AUC=0.91 (> 0.7)`` for an embedding test."""
    if metric.method in HIGHER_IS_DRIFT:
        return f"AUC={metric.score:.3g} (> {metric.threshold:g})"
    return f"p={metric.score:.3g} (< {metric.threshold:g})"


def answer_kind(completion: str) -> str:
    """empty, refusal or answer: what an answer is, before what it says."""
    text = completion.strip().lower()
    if not text:
        return "empty"
    return "refusal" if text.startswith(REFUSALS) else "answer"


def _words(text: str) -> list[str]:
    return [w.strip(".,:;!?'\"()").lower() for w in text.split() if w.strip(".,:;!?'\"()")]


@dataclass(frozen=True)
class Row:
    """The features of one prediction, as the windows keep them."""

    prompt_words_list: tuple[str, ...]
    prompt_chars: int
    completion_chars: int
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    segment: str
    label: str
    # Free text only (empty for labels): what the embeddings and the answer kind read.
    prompt_text: str = ""
    completion_text: str = ""
    answer_kind: str = "answer"

    @classmethod
    def of(cls, p: PredictionEvent, task: TaskObjective) -> Row:
        free_text = task.kind != "classification"
        label = "-" if free_text else (task.parse_label(p.completion) or "other")
        return cls(
            prompt_words_list=tuple(_words(p.prompt)),
            prompt_chars=len(p.prompt),
            completion_chars=len(p.completion),
            latency_ms=p.latency_ms,
            prompt_tokens=p.prompt_tokens,
            completion_tokens=p.completion_tokens,
            segment=p.segment or "none",
            label=label,
            prompt_text=p.prompt[:TEXT_KEPT] if free_text else "",
            completion_text=p.completion[:TEXT_KEPT] if free_text else "",
            answer_kind=answer_kind(p.completion),
        )


def _frame(rows: Sequence[Row], vocabulary: set[str]) -> pd.DataFrame:
    def oov(words: tuple[str, ...]) -> float:
        return sum(w not in vocabulary for w in words) / len(words) if words else 0.0

    return pd.DataFrame(
        {
            "prompt_chars": [r.prompt_chars for r in rows],
            "prompt_words": [len(r.prompt_words_list) for r in rows],
            "prompt_oov_share": [oov(r.prompt_words_list) for r in rows],
            "completion_chars": [r.completion_chars for r in rows],
            "latency_ms": [r.latency_ms for r in rows],
            "prompt_tokens": [r.prompt_tokens for r in rows],
            "completion_tokens": [r.completion_tokens for r in rows],
            "segment": [r.segment for r in rows],
            "label": [r.label for r in rows],
            "answer_kind": [r.answer_kind for r in rows],
        }
    )


# Embeddings of texts seen in recent windows: the reference is the same rows window after
# window, so only the current window's texts are new. Cleared when it grows past the limit.
_EMBEDDED: dict[str, np.ndarray] = {}
EMBEDDING_CACHE_SIZE = 20_000


def _embed_cached(texts: list[str]) -> np.ndarray:
    from refinery.common.similarity import embed  # loads the model on first use

    missing = list(dict.fromkeys(t for t in texts if t not in _EMBEDDED))
    if len(_EMBEDDED) + len(missing) > EMBEDDING_CACHE_SIZE:
        _EMBEDDED.clear()
        missing = list(dict.fromkeys(texts))
    if missing:
        _EMBEDDED.update(zip(missing, embed(missing), strict=True))
    return np.stack([_EMBEDDED[t] for t in texts])


def _with_embeddings(frame: pd.DataFrame, rows: Sequence[Row]) -> pd.DataFrame:
    """``frame`` plus the sentence embeddings of each row's prompt and answer."""
    parts = [frame.reset_index(drop=True)]
    for name, texts in (
        ("prompt_embedding", [r.prompt_text for r in rows]),
        ("completion_embedding", [r.completion_text for r in rows]),
    ):
        vectors = _embed_cached(texts)
        columns = [f"{name}_{i}" for i in range(vectors.shape[1])]
        parts.append(pd.DataFrame(vectors, columns=columns))
    return pd.concat(parts, axis=1)


@dataclass(frozen=True)
class ThumbsCount:
    down: int
    total: int
    # The same per API key fingerprint: (key, down, total); empty when not known.
    by_key: tuple[tuple[str, int, int], ...] = ()

    @property
    def rate(self) -> float:
        return self.down / self.total if self.total else 0.0

    @classmethod
    def of(cls, counts: Sequence[int], by_key: dict[str, list[int]]) -> ThumbsCount:
        keys = tuple((k, d, t) for k, (d, t) in sorted(by_key.items()) if t > 0)
        return cls(counts[0], counts[1], keys)


def thumbs_down_p_value(reference: ThumbsCount, current: ThumbsCount) -> float:
    """One-sided test that the current thumbs-down rate is higher than the reference's.

    Compared key by key, each key weighted by its share of the reference's ratings (a
    post-stratified two-proportion z-test): a key that did not rate in the reference (a new
    app, or a flood) cannot move the rate, and one that did moves it at most by its share.
    With one key (or none known) it is the plain two-proportion z-test.
    """
    ref = {k: (d, t) for k, d, t in reference.by_key}
    cur = {k: (d, t) for k, d, t in current.by_key}
    if len(ref | cur) <= 1:
        ref, cur = {"": (reference.down, reference.total)}, {"": (current.down, current.total)}
    shared = [k for k in cur if k in ref and ref[k][1] > 0 and cur[k][1] > 0]
    weight_sum = sum(ref[k][1] for k in shared)
    if not weight_sum:
        return 1.0
    diff = variance = 0.0
    for k in shared:
        (ref_down, ref_n), (cur_down, cur_n) = ref[k], cur[k]
        w = ref_n / weight_sum
        pooled = (ref_down + cur_down) / (ref_n + cur_n)
        diff += w * (cur_down / cur_n - ref_down / ref_n)
        variance += w * w * pooled * (1 - pooled) * (1 / ref_n + 1 / cur_n)
    if variance == 0:
        return 1.0
    return 0.5 * math.erfc(diff / math.sqrt(variance) / math.sqrt(2))


def ks_p_value(reference: pd.Series, current: pd.Series) -> float:
    """Two-sample Kolmogorov-Smirnov p-value, as Evidently's "ks" test computes it (scipy's
    two-sided ``ks_2samp`` on the finite values): run here, not through an Evidently
    report, which rendered each column's plots (0.28 s a window) only to be thrown away;
    the window's snapshot renders them once. Constant on both sides: 1 (nothing to compare).
    """
    ref = reference.replace([np.inf, -np.inf], np.nan).dropna()
    cur = current.replace([np.inf, -np.inf], np.nan).dropna()
    if ref.empty or cur.empty:
        return 1.0
    score = float(ks_2samp(ref, cur).pvalue)
    return 1.0 if math.isnan(score) else score


def _embedding_drift(ref: pd.DataFrame, cur: pd.DataFrame) -> list[DriftMetric]:
    """Evidently's embedding drift (a classifier told to separate the two windows) on the
    prompts' and the answers' sentence embeddings."""
    embeddings = {name: [c for c in cur.columns if c.startswith(f"{name}_")] for name in EMBEDDINGS}
    definition = DataDefinition(
        numerical_columns=list(NUMERIC),
        categorical_columns=list(FREE_TEXT_CATEGORICAL),
        embeddings=embeddings,
    )
    method = ModelDriftMethod(threshold=EMBEDDING_AUC)
    snapshot = Report(
        [EmbeddingsDrift(embeddings_name=n, drift_method=method) for n in EMBEDDINGS]
    ).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    metrics = []
    for name, result in zip(EMBEDDINGS, snapshot.dict()["metrics"], strict=True):
        auc = float(result["value"])
        metrics.append(
            DriftMetric(
                column=name,
                method="embedding_classifier_auc",
                score=auc,
                threshold=EMBEDDING_AUC,
                drifted=auc > EMBEDDING_AUC,
            )
        )
    return metrics


def homogeneity_p_value(reference: Sequence[str], current: Sequence[str]) -> float:
    """Chi-square test that both samples come from one category distribution."""
    categories = sorted(set(reference) | set(current))
    if len(categories) < 2:
        return 1.0
    table = [[list(sample).count(c) for c in categories] for sample in (reference, current)]
    return float(chi2_contingency(table).pvalue)


@dataclass(frozen=True)
class DriftResult:
    """Every test's verdict, and the feature frames they ran on (the window's report,
    refinery/monitor/report.py, shows them: embeddings left out)."""

    metrics: list[DriftMetric]
    reference: pd.DataFrame
    current: pd.DataFrame
    definition: DataDefinition

    @property
    def drifted_columns(self) -> list[str]:
        return [m.column for m in self.metrics if m.drifted]


def detect_drift(
    reference: Sequence[Row],
    current: Sequence[Row],
    p_value: float,
    reference_thumbs: ThumbsCount | None = None,
    current_thumbs: ThumbsCount | None = None,
    thumbs_p_value: float | None = None,
    free_text: bool = False,
) -> DriftResult:
    """Test every feature of ``current`` against ``reference``.

    The vocabulary comes from the first half of the reference; the reference's own OOV
    shares are measured on its second half, so both sides are measured the same way.
    """
    if len(reference) < 4 or not current:
        raise ValueError("need at least 4 reference rows and 1 current row")
    categorical = FREE_TEXT_CATEGORICAL if free_text else CATEGORICAL
    per_column = p_value / (len(NUMERIC) + len(categorical))
    half = len(reference) // 2
    vocabulary = {w for r in reference[:half] for w in r.prompt_words_list}
    ref = _frame(reference[half:], vocabulary)
    cur = _frame(current, vocabulary)
    metrics = []
    for column in NUMERIC:
        score = ks_p_value(ref[column], cur[column])
        metrics.append(
            DriftMetric(
                column=column,
                method="ks",
                score=score,
                threshold=per_column,
                drifted=score < per_column,
            )
        )
    if free_text:
        metrics += _embedding_drift(
            _with_embeddings(ref, reference[half:]), _with_embeddings(cur, current)
        )
    for column in categorical:
        score = homogeneity_p_value(ref[column].tolist(), cur[column].tolist())
        metrics.append(
            DriftMetric(
                column=column,
                method="chi2_contingency",
                score=score,
                threshold=per_column,
                drifted=score < per_column,
            )
        )
    if reference_thumbs is not None and current_thumbs is not None:
        threshold = thumbs_p_value if thumbs_p_value is not None else p_value
        score = thumbs_down_p_value(reference_thumbs, current_thumbs)
        metrics.append(
            DriftMetric(
                column=THUMBS_DOWN,
                method="two_proportion_z",
                score=score,
                threshold=threshold,
                drifted=score < threshold,
            )
        )
    features = [*NUMERIC, *categorical]
    shown = DataDefinition(numerical_columns=list(NUMERIC), categorical_columns=list(categorical))
    return DriftResult(metrics, ref[features], cur[features], shown)


def warm_up(free_text: bool) -> DriftResult:
    """Run the tests once on made-up rows, at worker start (the worker renders their
    report too).

    The first window otherwise pays for the imports, the embedding model's load and the
    report's first render, on a host where vLLM already takes the cores: measured ~100 s for
    each of the first two free-text windows beside 6 requests/s, ~10 s for later ones.
    """
    rows = [
        Row(
            prompt_words_list=("ticket", f"word{i}"),
            prompt_chars=20 + i,
            completion_chars=30 + i,
            latency_ms=10.0 + i,
            prompt_tokens=8 + i,
            completion_tokens=4 + i % 3,
            segment="a" if i % 2 else "b",
            label="x" if i % 3 else "y",
            prompt_text=f"ticket number {i}" if free_text else "",
            completion_text=f"answer number {i}" if free_text else "",
        )
        for i in range(96)  # the embedding report's t-SNE needs more rows than its perplexity
    ]
    result = detect_drift(rows[:64], rows[64:], 0.01, free_text=free_text)
    _EMBEDDED.clear()
    return result
