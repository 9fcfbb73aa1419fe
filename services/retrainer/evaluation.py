"""Champion against challenger on the same items: metrics, a paired test, the gate, a report.

Both models answer the same test items (the recent-traffic test split and the golden set),
so every comparison here is paired: per item, who got it right. The difference in the main
metric gets a paired bootstrap interval (resampling items, not models, keeps the
correlation between the two models' answers, which is what makes a small difference
detectable) and an exact McNemar test on the discordant items. The gate promotes only when
the challenger is better on recent traffic by a margin that is not noise and no worse than
the tolerance on the golden set; anything missing or undecidable rejects (it fails closed).
The error analysis (confusion matrices, per-segment metrics, flipped items) is what a
person reads to see why.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from services.common.task import GateSpec, TaskObjective

OTHER = "other"  # the label of a completion that names none of the task's labels
NO_SEGMENT = "none"
FLIP_LIMIT = 50  # flipped items kept per direction in error_analysis.json
REPORT_FLIPS = 10  # flipped items shown per direction in report.md
WRONG_NOW = "challenger_wrong_champion_right"
RIGHT_NOW = "challenger_right_champion_wrong"


@dataclass(frozen=True)
class Scored:
    """One test item scored for one model."""

    prompt: str
    target: str  # the reference completion
    output: str  # what the model generated
    segment: str | None
    correct: bool


def _label(task: TaskObjective, completion: str) -> str:
    return task.parse_label(completion) or OTHER


def score_outputs(
    task: TaskObjective,
    prompts: Sequence[str],
    targets: Sequence[str],
    outputs: Sequence[str],
    segments: Sequence[str | None],
) -> list[Scored]:
    """Mark each output right or wrong: by parsed label for classification (the label is what
    is served), by exact match after stripping whitespace for generation."""
    if not len(prompts) == len(targets) == len(outputs) == len(segments):
        raise ValueError(
            f"prompts, targets, outputs and segments differ in length: {len(prompts)}, "
            f"{len(targets)}, {len(outputs)}, {len(segments)}"
        )
    scored = []
    for prompt, target, output, segment in zip(prompts, targets, outputs, segments, strict=True):
        if task.kind == "classification":
            correct = task.parse_label(output) == task.parse_label(target)
        else:
            correct = output.strip() == target.strip()
        scored.append(Scored(prompt, target, output, segment, correct))
    return scored


def main_metric(task: TaskObjective) -> str:
    """The metric the gate compares: per-item correctness averaged, so it can be paired."""
    return "accuracy" if task.kind == "classification" else "exact_match"


def metrics(task: TaskObjective, scored: Sequence[Scored]) -> dict[str, float]:
    """The task's metrics over ``scored``; every metric is 0.0 when there are no items.

    Macro F1 is over the task's labels only, so a model that answers "other" everywhere
    gets no credit for it; BLEU and chrF are corpus-level, on sacrebleu's 0-100 scale.
    """
    n = len(scored)
    share = sum(s.correct for s in scored) / n if n else 0.0
    if task.kind == "classification":
        if not n:
            return {"accuracy": 0.0, "macro_f1": 0.0, "n": 0.0}
        macro_f1 = f1_score(
            [_label(task, s.target) for s in scored],
            [_label(task, s.output) for s in scored],
            labels=task.labels,
            average="macro",
            zero_division=0,
        )
        return {"accuracy": share, "macro_f1": float(macro_f1), "n": float(n)}
    if not n:
        return {"exact_match": 0.0, "bleu": 0.0, "chrf": 0.0, "n": 0.0}
    hypotheses = [s.output.strip() for s in scored]
    references = [[s.target.strip() for s in scored]]
    return {
        "exact_match": share,
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, references).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, references).score),
        "n": float(n),
    }


@dataclass(frozen=True)
class PairedComparison:
    """Challenger minus champion on the same items, with its uncertainty."""

    metric: str
    champion: float
    challenger: float
    difference: float  # challenger - champion
    ci_low: float
    ci_high: float  # paired bootstrap percentile interval of the difference at `confidence`
    mcnemar_p: float  # exact two-sided McNemar; 1.0 when no item is discordant
    champion_only: int  # items only the champion got right
    challenger_only: int  # items only the challenger got right
    n: int
    confidence: float = 0.95  # the level of ci_low..ci_high


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
    *,
    metric: str = "accuracy",
) -> PairedComparison:
    """Pair the two models item by item on per-item correctness.

    The bootstrap resamples item indices and takes both models' answers on each, so the
    interval reflects the paired variance (items hard for both cancel out), far narrower
    than two independent intervals. McNemar is the exact binomial test on the items where
    exactly one model is right. ``metric`` names what correctness averages to (see
    ``main_metric``). Seeded, so the same inputs give the same interval.
    """
    _check_paired(champion, challenger)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    a = np.array([s.correct for s in champion], dtype=float)
    b = np.array([s.correct for s in challenger], dtype=float)
    diff = b - a
    means = _bootstrap_means(diff, samples, np.random.default_rng(seed))
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    champion_only = int(np.sum((a == 1) & (b == 0)))
    challenger_only = int(np.sum((a == 0) & (b == 1)))
    discordant = champion_only + challenger_only
    p = min(1.0, float(binomtest(champion_only, discordant, 0.5).pvalue)) if discordant else 1.0
    return PairedComparison(
        metric=metric,
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


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]  # why it was promoted, or every reason it was rejected


def _level(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _interval(c: PairedComparison, confidence: float) -> str:
    return f"{_level(confidence)} CI {c.ci_low:+.3f}..{c.ci_high:+.3f}"


def gate(recent: PairedComparison, golden: PairedComparison, spec: GateSpec) -> GateDecision:
    """Promote only when every condition holds; a NaN anywhere fails its condition.

    Recent traffic must show enough test items, an improvement of at least
    ``min_improvement`` and a confidence interval wholly above zero; the golden set (the
    fixed regression check) may drop by at most ``golden_tolerance``.
    """
    recent_ci = _interval(recent, spec.confidence)
    checks = [
        (
            recent.n >= spec.min_test_examples,
            f"recent traffic: {recent.n} test examples >= {spec.min_test_examples} required",
            f"recent traffic: only {recent.n} test examples, {spec.min_test_examples} required",
        ),
        (
            recent.difference >= spec.min_improvement,
            f"recent traffic: {recent.metric} {recent.difference:+.3f} ({recent_ci}) "
            f">= {spec.min_improvement:+.3f} required",
            f"recent traffic: {recent.metric} {recent.difference:+.3f} ({recent_ci}) "
            f"< {spec.min_improvement:+.3f} required",
        ),
        (
            recent.ci_low > 0,
            f"recent traffic: {_level(spec.confidence)} CI lower bound {recent.ci_low:+.3f} "
            f"> 0 (McNemar p={recent.mcnemar_p:.3g})",
            f"recent traffic: {_level(spec.confidence)} CI lower bound {recent.ci_low:+.3f} "
            f"<= 0: the improvement may be noise (McNemar p={recent.mcnemar_p:.3g})",
        ),
        (
            golden.difference >= -spec.golden_tolerance,
            f"golden set: {golden.metric} {golden.difference:+.3f} "
            f"({_interval(golden, spec.confidence)}) within the "
            f"-{spec.golden_tolerance:.3f} tolerance",
            f"golden set: {golden.metric} {golden.difference:+.3f} "
            f"({_interval(golden, spec.confidence)}) drops more than the "
            f"-{spec.golden_tolerance:.3f} tolerance",
        ),
    ]
    failed = [bad for ok, _, bad in checks if not ok]
    if failed:
        return GateDecision(promote=False, reasons=failed)
    return GateDecision(promote=True, reasons=[good for _, good, _ in checks])


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
                f"{c.ci_low:+.3f}..{c.ci_high:+.3f} ({_level(c.confidence)})",
                f"{c.mcnemar_p:.3g} ({c.champion_only} vs {c.challenger_only} discordant)",
                c.n,
            ]
        )
    if entry is not None:
        champ, chall = entry["metrics"]["champion"], entry["metrics"]["challenger"]
        for metric in champ:
            if metric == "n" or (c is not None and metric == c.metric):
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
