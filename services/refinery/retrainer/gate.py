"""The promotion gate: whether the challenger replaces the champion, and every reason why.

It decides on the task file's ``gate.metric`` only, as paired comparisons of mean per-item
scores on a 0-1 scale (evaluation.py): the challenger must be better on recent traffic by
a margin that is not noise and no worse than the tolerance on the golden set. Anything
missing, mismatched or undecidable (NaN) rejects: the gate fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass

from refinery.common.task import DEFAULT_METRIC, GateMetric, GateSpec, TaskFile
from refinery.retrainer.evaluation import MEAN_KEY, PairedComparison, level


@dataclass(frozen=True)
class GateDecision:
    """Promote or not; the reasons are what the registry and the report show."""

    promote: bool
    reasons: list[str]  # why it was promoted, or every reason it was rejected


def main_metric(task: TaskFile) -> GateMetric:
    """The metric the gate decides on: the task file's ``gate.metric`` (filled in with the
    task kind's default when the file loads)."""
    return task.gate.metric or DEFAULT_METRIC[task.task.kind]


def main_metric_key(task: TaskFile) -> str:
    """Where ``evaluation.metrics`` keeps the gate metric's mean per-item score (0-1)."""
    return MEAN_KEY[main_metric(task)]


def _interval(c: PairedComparison, confidence: float) -> str:
    return f"{level(confidence)} CI {c.ci_low:+.3f}..{c.ci_high:+.3f}"


def _unusable(
    recent: PairedComparison | None, golden: PairedComparison | None, spec: GateSpec
) -> str | None:
    """Why the comparisons cannot be gated on at all, or None."""
    missing = [name for name, c in (("recent", recent), ("golden", golden)) if c is None]
    if missing:
        return f"no {' or '.join(missing)} test examples to compare on"
    assert recent is not None and golden is not None
    wanted = {recent.metric, golden.metric, spec.metric or recent.metric}
    if len(wanted) > 1:
        return (
            f"recent traffic compared on {recent.metric}, golden set on {golden.metric}, "
            f"gate.metric is {spec.metric or 'unset'}: no decision across metrics"
        )
    return None


def gate(
    recent: PairedComparison | None, golden: PairedComparison | None, spec: GateSpec
) -> GateDecision:
    """Promote only when every condition holds; a NaN anywhere fails its condition.

    Both sets must have been compared, in ``spec.metric``. Recent traffic must show enough
    test items, an improvement of at least ``min_improvement`` and a confidence interval
    wholly above zero; the golden set (the fixed regression check) may drop by at most
    ``golden_tolerance``. Both thresholds are on the metric's 0-1 scale.
    """
    unusable = _unusable(recent, golden, spec)
    if unusable is not None:
        return GateDecision(promote=False, reasons=[unusable])
    assert recent is not None and golden is not None
    recent_ci = _interval(recent, spec.confidence)
    confidence = level(spec.confidence)
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
            f"recent traffic: {confidence} CI lower bound {recent.ci_low:+.3f} "
            f"> 0 (McNemar p={recent.mcnemar_p:.3g})",
            f"recent traffic: {confidence} CI lower bound {recent.ci_low:+.3f} "
            f"<= 0: the improvement may be noise (McNemar p={recent.mcnemar_p:.3g})",
        ),
        (
            golden.difference >= -spec.golden_tolerance,
            f"golden set: {golden.metric} {golden.difference:+.3f} "
            f"({_interval(golden, spec.confidence)}) within the "
            f"-{spec.golden_tolerance:.3f} tolerance",
            f"golden set: {golden.metric} {golden.difference:+.3f} "
            f"({golden.champion:.3f} -> {golden.challenger:.3f}, "
            f"{_interval(golden, spec.confidence)}) drops more than the "
            f"-{spec.golden_tolerance:.3f} tolerance",
        ),
    ]
    failed = [bad for ok, _, bad in checks if not ok]
    if failed:
        return GateDecision(promote=False, reasons=failed)
    return GateDecision(promote=True, reasons=[good for _, good, _ in checks])
