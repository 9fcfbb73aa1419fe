"""Champion against challenger on the same items: per-item scores, a paired test, a report.

Both models answer the same test items (the recent-traffic test split and the golden set),
so every comparison here is paired: per item, how well each model did, as a score on a 0-1
scale in the task file's ``gate.metric`` (1 or 0 for accuracy and exact match, sentence
chrF or BLEU / 100, embedding cosine for ``semantic``). The difference of the mean scores
gets a paired bootstrap interval (resampling items, not models, keeps the correlation
between the two models' answers, which is what makes a small difference detectable) and
an exact McNemar test on the items where exactly one model is correct. The gate
(``gate.py``) decides on these; the error analysis (confusion matrices, per-segment
metrics, flipped items) is what a person reads to see why.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, assert_never

import numpy as np
import sacrebleu
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from refinery.common import similarity
from refinery.common.task import GateMetric, TaskObjective, metric_error

if TYPE_CHECKING:
    from refinery.retrainer.gate import GateDecision

OTHER = "other"  # the label of a completion that names none of the task's labels
NO_SEGMENT = "none"
FLIP_LIMIT = 50  # flipped items kept per direction in error_analysis.json
REPORT_FLIPS = 10  # flipped items shown per direction in report.md
WRONG_NOW = "challenger_wrong_champion_right"
RIGHT_NOW = "challenger_right_champion_wrong"
# An item counts as correct (McNemar, flipped items) at half the 0-1 scale or above: for
# accuracy and exact match (scores 0 or 1) that is "right"; for graded metrics it is a
# convention for the report, never what the gate decides on (the mean score is).
CORRECT_AT = 0.5
# Where metrics() keeps each gate metric's mean per-item score (0-1). chrF and BLEU get
# their own names: "chrf" and "bleu" there are corpus-level, on sacrebleu's 0-100 scale.
MEAN_KEY: dict[GateMetric, str] = {
    "accuracy": "accuracy",
    "exact_match": "exact_match",
    "chrf": "sentence_chrf",
    "bleu": "sentence_bleu",
    "semantic": "semantic",
}


@dataclass(frozen=True)
class Scored:
    """One test item scored for one model, in one metric."""

    prompt: str
    target: str  # the reference completion
    output: str  # what the model generated
    segment: str | None
    score: float  # 0-1 in `metric`; the paired bootstrap averages it
    metric: GateMetric = "accuracy"

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"a per-item score is on the 0-1 scale, got {self.score}")
        object.__setattr__(self, "score", float(self.score))

    @property
    def correct(self) -> bool:
        """Right or wrong, for McNemar and the flipped items (see CORRECT_AT)."""
        return self.score >= CORRECT_AT


def _label(task: TaskObjective, completion: str) -> str:
    return task.parse_label(completion) or OTHER


def item_scores(
    task: TaskObjective, metric: GateMetric, targets: Sequence[str], outputs: Sequence[str]
) -> list[float]:
    """Each output against its target on a 0-1 scale: the one definition of "how right".

    Classification compares parsed labels (the label is what is served). Free text is
    compared after stripping whitespace; an output identical to its target scores 1 in
    every metric (sacrebleu gives two empty strings 0). Semantic similarity is the cosine
    of the two sentence embeddings, clipped at 0 (opposed meaning is no better than none).
    """
    error = metric_error(task.kind, metric)
    if error is not None:
        raise ValueError(error)
    if len(targets) != len(outputs):
        raise ValueError(f"{len(targets)} targets but {len(outputs)} outputs")
    if metric == "accuracy":
        return [
            float(task.parse_label(o) == task.parse_label(t))
            for t, o in zip(targets, outputs, strict=True)
        ]
    refs = [t.strip() for t in targets]
    hyps = [o.strip() for o in outputs]
    if metric == "exact_match":
        return [float(h == r) for h, r in zip(hyps, refs, strict=True)]
    pairs = list(zip(hyps, refs, strict=True))
    if metric == "chrf":
        graded = [sacrebleu.sentence_chrf(h, [r]).score / 100 for h, r in pairs]
    elif metric == "bleu":
        graded = [sacrebleu.sentence_bleu(h, [r]).score / 100 for h, r in pairs]
    elif metric == "semantic":
        graded = similarity.cosine(hyps, refs)
    else:
        assert_never(metric)
    scores = zip(pairs, graded, strict=True)
    return [1.0 if h == r else min(1.0, max(0.0, g)) for (h, r), g in scores]


def score_outputs(
    task: TaskObjective,
    prompts: Sequence[str],
    targets: Sequence[str],
    outputs: Sequence[str],
    segments: Sequence[str | None],
    *,
    metric: GateMetric,
) -> list[Scored]:
    """Score each output in ``metric`` (the gate's, from ``gate.main_metric``)."""
    if not len(prompts) == len(targets) == len(outputs) == len(segments):
        raise ValueError(
            f"prompts, targets, outputs and segments differ in length: {len(prompts)}, "
            f"{len(targets)}, {len(outputs)}, {len(segments)}"
        )
    scores = item_scores(task, metric, targets, outputs)
    return [
        Scored(prompt, target, output, segment, score, metric)
        for prompt, target, output, segment, score in zip(
            prompts, targets, outputs, segments, scores, strict=True
        )
    ]


def metrics(task: TaskObjective, scored: Sequence[Scored]) -> dict[str, float]:
    """The task's metrics over ``scored``; every metric is 0.0 when there are no items.

    Macro F1 is over the task's labels only, so a model that answers "other" everywhere
    gets no credit for it. For free text, bleu and chrf are corpus-level (0-100), and the
    gate metric's mean per-item score (0-1) is added under its ``MEAN_KEY``.
    """
    n = len(scored)
    if task.kind == "classification":
        if not n:
            return {"accuracy": 0.0, "macro_f1": 0.0, "n": 0.0}
        truth = [_label(task, s.target) for s in scored]
        predicted = [_label(task, s.output) for s in scored]
        accuracy = sum(t == p for t, p in zip(truth, predicted, strict=True)) / n
        macro_f1 = f1_score(truth, predicted, labels=task.labels, average="macro", zero_division=0)
        return {"accuracy": accuracy, "macro_f1": float(macro_f1), "n": float(n)}
    if not n:
        return {"exact_match": 0.0, "bleu": 0.0, "chrf": 0.0, "n": 0.0}
    hypotheses = [s.output.strip() for s in scored]
    references = [s.target.strip() for s in scored]
    result = {
        "exact_match": sum(h == r for h, r in zip(hypotheses, references, strict=True)) / n,
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
    }
    key = MEAN_KEY[_metric_of(scored)]
    if key not in result:
        result[key] = sum(s.score for s in scored) / n
    return {**result, "n": float(n)}


@dataclass(frozen=True)
class PairedComparison:
    """Challenger minus champion on the same items, in the gate metric, with its uncertainty."""

    metric: GateMetric
    champion: float  # mean per-item score, 0-1
    challenger: float
    difference: float  # challenger - champion, on the same 0-1 scale
    ci_low: float
    ci_high: float  # paired bootstrap percentile interval of the difference at `confidence`
    mcnemar_p: float  # exact two-sided McNemar on `correct`; 1.0 when no item is discordant
    champion_only: int  # items only the champion got correct
    challenger_only: int  # items only the challenger got correct
    n: int
    confidence: float = 0.95  # the level of ci_low..ci_high

    @property
    def graded(self) -> bool:
        """Per-item scores between 0 and 1, not just right or wrong."""
        return self.metric not in ("accuracy", "exact_match")


def level(confidence: float) -> str:
    """A confidence level as people write it: 0.95 -> "95%"."""
    return f"{confidence * 100:g}%"


def _metric_of(*sides: Sequence[Scored]) -> GateMetric:
    """The one metric every item was scored in; mixing metrics makes a mean meaningless."""
    found = {s.metric for side in sides for s in side}
    if len(found) != 1:
        raise ValueError(f"items scored in {sorted(found) or 'no'} metrics; need exactly one")
    return found.pop()


def _check_paired(champion: Sequence[Scored], challenger: Sequence[Scored]) -> None:
    if not champion or not challenger:
        raise ValueError("nothing to compare: a scored list is empty")
    if len(champion) != len(challenger):
        raise ValueError(
            f"champion scored {len(champion)} items, challenger {len(challenger)}; "
            "a paired comparison needs the same items"
        )
    for i, (a, b) in enumerate(zip(champion, challenger, strict=True)):
        if a.prompt != b.prompt:
            raise ValueError(f"item {i} differs between champion and challenger: not paired")
    _metric_of(champion, challenger)


def _bootstrap_means(diff: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``samples`` resamples (with replacement) of ``diff``, in bounded chunks."""
    n = len(diff)
    chunk = max(1, 2_000_000 // n)
    means = []
    for start in range(0, samples, chunk):
        rows = min(chunk, samples - start)
        means.append(diff[rng.integers(0, n, size=(rows, n))].mean(axis=1))
    return np.concatenate(means)


def compare(
    champion: Sequence[Scored],
    challenger: Sequence[Scored],
    confidence: float,
    samples: int,
    seed: int = 0,
) -> PairedComparison:
    """Pair the two models item by item on their per-item scores.

    The bootstrap resamples item indices and takes both models' scores on each, so the
    interval reflects the paired variance (items hard for both cancel out), far narrower
    than two independent intervals. McNemar is the exact binomial test on the items where
    exactly one model is correct (for graded metrics: at a score of CORRECT_AT or more).
    Seeded, so the same inputs give the same interval.
    """
    _check_paired(champion, challenger)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    a = np.array([s.score for s in champion], dtype=float)
    b = np.array([s.score for s in challenger], dtype=float)
    diff = b - a
    means = _bootstrap_means(diff, samples, np.random.default_rng(seed))
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    right_a = np.array([s.correct for s in champion])
    right_b = np.array([s.correct for s in challenger])
    champion_only = int(np.sum(right_a & ~right_b))
    challenger_only = int(np.sum(~right_a & right_b))
    discordant = champion_only + challenger_only
    p = min(1.0, float(binomtest(champion_only, discordant, 0.5).pvalue)) if discordant else 1.0
    return PairedComparison(
        metric=_metric_of(champion),
        champion=float(a.mean()),
        challenger=float(b.mean()),
        difference=float(diff.mean()),
        ci_low=float(low),
        ci_high=float(high),
        mcnemar_p=p,
        champion_only=champion_only,
        challenger_only=challenger_only,
        n=len(diff),
        confidence=confidence,
    )


def confusion(task: TaskObjective, scored: Sequence[Scored]) -> dict[str, dict[str, int]]:
    """True label -> predicted label -> count, over the labels and "other", zeros included
    so every matrix has the same shape."""
    if task.kind != "classification":
        raise ValueError("a confusion matrix needs a classification task")
    names = [*task.labels, OTHER]
    table = {true: dict.fromkeys(names, 0) for true in names}
    for s in scored:
        table[_label(task, s.target)][_label(task, s.output)] += 1
    return table


def per_segment(task: TaskObjective, scored: Sequence[Scored]) -> dict[str, dict[str, float]]:
    """Metrics per segment (``"none"`` when unknown): a new segment is where drift shows."""
    groups: dict[str, list[Scored]] = defaultdict(list)
    for s in scored:
        groups[s.segment if s.segment is not None else NO_SEGMENT].append(s)
    return {segment: metrics(task, groups[segment]) for segment in sorted(groups)}


def flips(
    champion: Sequence[Scored], challenger: Sequence[Scored]
) -> dict[str, list[dict[str, str]]]:
    """The items the two models disagree on, both ways: the regressions are the ones to read."""
    _check_paired(champion, challenger)
    out: dict[str, list[dict[str, str]]] = {WRONG_NOW: [], RIGHT_NOW: []}
    for a, b in zip(champion, challenger, strict=True):
        if a.correct == b.correct:
            continue
        out[RIGHT_NOW if b.correct else WRONG_NOW].append(
            {
                "prompt": a.prompt,
                "target": a.target,
                "champion": a.output,
                "challenger": b.output,
                "segment": a.segment if a.segment is not None else NO_SEGMENT,
            }
        )
    return out


def error_analysis(
    task: TaskObjective, sets: dict[str, tuple[Sequence[Scored], Sequence[Scored]]]
) -> dict[str, Any]:
    """Per set (e.g. "golden", "recent"): metrics, confusion (classification only) and
    per-segment metrics of both models, and up to 50 flipped items each way with the full
    counts; plain JSON types only."""
    analysis: dict[str, Any] = {}
    for name, (champion, challenger) in sets.items():
        flipped = flips(champion, challenger)
        entry: dict[str, Any] = {
            "metrics": {
                "champion": metrics(task, champion),
                "challenger": metrics(task, challenger),
            },
            "per_segment": {
                "champion": per_segment(task, champion),
                "challenger": per_segment(task, challenger),
            },
            "flip_counts": {way: len(items) for way, items in flipped.items()},
            "flips": {way: items[:FLIP_LIMIT] for way, items in flipped.items()},
        }
        if task.kind == "classification":
            entry["confusion"] = {
                "champion": confusion(task, champion),
                "challenger": confusion(task, challenger),
            }
        analysis[name] = entry
    return analysis


def _cell(value: object, limit: int = 80) -> str:
    """One Markdown table cell: a single line, pipes escaped, long text cut."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows), ""]


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def _metrics_rows(
    name: str, entry: dict[str, Any] | None, c: PairedComparison | None
) -> list[list[object]]:
    rows: list[list[object]] = []
    if c is not None:
        rows.append(
            [
                name,
                f"{c.metric} (gate)",
                f"{c.champion:.3f}",
                f"{c.challenger:.3f}",
                f"{c.difference:+.3f}",
                f"{c.ci_low:+.3f}..{c.ci_high:+.3f} ({level(c.confidence)})",
                f"{c.mcnemar_p:.3g} ({c.champion_only} vs {c.challenger_only} discordant)",
                c.n,
            ]
        )
    if entry is not None:
        champ, chall = entry["metrics"]["champion"], entry["metrics"]["challenger"]
        for metric in champ:
            if metric == "n" or (c is not None and metric == MEAN_KEY[c.metric]):
                continue
            difference = chall[metric] - champ[metric]
            rows.append(
                [
                    name,
                    metric,
                    _number(champ[metric]),
                    _number(chall[metric]),
                    f"{difference:+.3f}",
                    "-",
                    "-",
                    int(champ["n"]),
                ]
            )
    return rows


def _scale_notes(comparisons: Sequence[PairedComparison]) -> list[str]:
    """What a graded gate metric's numbers mean: its scale, and what McNemar counted."""
    if not any(c.graded for c in comparisons):
        return []
    return [
        "Gate rows: mean per-item score on a 0-1 scale (the gate decides on its difference "
        f"and interval); McNemar and the flips count a score >= {CORRECT_AT} as correct. "
        "Corpus-level bleu and chrf rows are on sacrebleu's 0-100 scale.",
        "",
    ]


def _confusion_lines(title: str, table: dict[str, dict[str, int]]) -> list[str]:
    names = list(table)
    return [
        f"**{title}** (rows: true label, columns: predicted)",
        "",
        *_table(["true \\ predicted", *names], [[t, *table[t].values()] for t in names]),
    ]


def _segment_lines(entry: dict[str, Any]) -> list[str]:
    champ, chall = entry["per_segment"]["champion"], entry["per_segment"]["challenger"]
    segments = sorted(set(champ) | set(chall))
    if not segments:
        return ["No items.", ""]
    names = [m for m in next(iter(champ.values())) if m != "n"]
    header = ["segment", "n", *(f"{m} {who}" for m in names for who in ("champion", "challenger"))]
    rows = []
    for seg in segments:
        a, b = champ.get(seg, {}), chall.get(seg, {})
        n = a.get("n", b.get("n", 0.0))
        values = [_number(side[m]) if m in side else "-" for m in names for side in (a, b)]
        rows.append([seg, int(n), *values])
    return _table(header, rows)


def _flip_lines(entry: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for way, title in (
        (WRONG_NOW, "Challenger wrong, champion right (regressions)"),
        (RIGHT_NOW, "Challenger right, champion wrong (fixes)"),
    ):
        items = entry["flips"][way]
        total = entry["flip_counts"][way]
        lines += [f"**{title}**: {total}", ""]
        if items:
            shown = items[:REPORT_FLIPS]
            lines += _table(
                ["prompt", "target", "champion", "challenger", "segment"],
                [
                    [i["prompt"], i["target"], i["champion"], i["challenger"], i["segment"]]
                    for i in shown
                ],
            )
            if total > len(shown):
                lines += [f"({total - len(shown)} more not shown)", ""]
    return lines


def render_report(
    analysis: dict[str, Any], comparisons: dict[str, PairedComparison], decision: GateDecision
) -> str:
    """The Markdown report: decision first, then the numbers a reviewer checks it against."""
    verdict = "PROMOTE the challenger" if decision.promote else "REJECT the challenger"
    lines = ["# Challenger evaluation", "", f"**Decision: {verdict}**", ""]
    lines += [f"- {reason}" for reason in decision.reasons] or ["- (no reasons given)"]
    lines.append("")
    names = list(analysis) + [n for n in comparisons if n not in analysis]
    lines += ["## Metrics", ""]
    header = ["set", "metric", "champion", "challenger", "difference", "CI", "McNemar p", "n"]
    rows = [r for n in names for r in _metrics_rows(n, analysis.get(n), comparisons.get(n))]
    lines += _table(header, rows)
    lines += _scale_notes(list(comparisons.values()))
    for name in analysis:
        entry = analysis[name]
        lines += [f"## {name}", ""]
        if "confusion" in entry:
            lines += ["### Confusion matrices", ""]
            lines += _confusion_lines("champion", entry["confusion"]["champion"])
            lines += _confusion_lines("challenger", entry["confusion"]["challenger"])
        lines += ["### Per segment", ""]
        lines += _segment_lines(entry)
        lines += ["### Flipped items", ""]
        lines += _flip_lines(entry)
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    analysis: dict[str, Any],
    comparisons: dict[str, PairedComparison],
    decision: GateDecision,
    out_dir: Path,
) -> list[Path]:
    """Write ``error_analysis.json`` (for tools) and ``report.md`` (for people) to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "error_analysis.json"
    json_path.write_text(json.dumps(analysis, indent=2, ensure_ascii=False) + "\n")
    md_path = out_dir / "report.md"
    md_path.write_text(render_report(analysis, comparisons, decision))
    return [json_path, md_path]
