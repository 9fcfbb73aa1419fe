"""The canary decision: promote, roll back or keep watching, from live ratings of two arms.

Live thumbs on the champion's and the challenger's answers are compared by an always-valid
confidence sequence on the difference in thumbs-up rate (challenger minus champion): the
normal-mixture sequential test of Johari, Pekelis and Walsh ("Always valid inference",
2017, the mSPRT behind Optimizely's stats engine) with plug-in Bernoulli variances. It
stays valid however often it is checked, so the judge may look after every rating; a
fixed-sample test checked that way promotes a coin flip far more often than its level
says (measured in ``tests/retrainer/test_canary.py``).

Decision, with ``margin`` m >= 0 on the 0-1 scale:
- promote when the whole interval lies above -m (the challenger is not worse than the
  champion by more than m; with m = 0: better);
- roll back when the whole interval lies below -m (worse by more than m);
- at the sample or time budget, undecided: roll back (the champion stays; fail closed).

With a canary exactly as good as the champion, the chance of any verdict before the
budget (a false promotion or a false rollback) is at most ``alpha`` (asymptotically: the
variances are estimated; ``min_per_arm`` keeps the first looks away from tiny samples).
``python -m bench.canary`` measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from refinery.common.task import CanarySpec

Verdict = Literal["promote", "rollback", "continue"]


@dataclass(frozen=True)
class ArmCounts:
    """Thumbs on one arm's answers."""

    up: int = 0
    down: int = 0

    @property
    def n(self) -> int:
        return self.up + self.down

    def rate(self) -> float:
        return self.up / self.n if self.n else math.nan

    def add(self, up: bool) -> ArmCounts:
        return ArmCounts(self.up + up, self.down + (not up))


@dataclass(frozen=True)
class Interval:
    """The confidence sequence's current interval on challenger minus champion."""

    estimate: float
    low: float
    high: float


def _variance(arm: ArmCounts) -> float:
    """Plug-in Bernoulli variance of one rating, smoothed (one up, one down added) so an
    arm with no thumbs-down yet does not claim zero noise."""
    p = (arm.up + 1) / (arm.n + 2)
    return p * (1 - p)


def interval(champion: ArmCounts, canary: ArmCounts, policy: CanarySpec) -> Interval:
    """The always-valid interval for the difference in thumbs-up rate.

    With v the variance of the estimated difference and tau the mixture scale, the mSPRT
    statistic for a difference theta0 is sqrt(v / (v + tau^2)) * exp(tau^2 (d - theta0)^2
    / (2 v (v + tau^2))); the interval is every theta0 it has not rejected at 1/alpha."""
    if champion.n == 0 or canary.n == 0:
        return Interval(math.nan, -1.0, 1.0)
    v = _variance(champion) / champion.n + _variance(canary) / canary.n
    tau2 = policy.effect_scale**2
    radius = math.sqrt(
        2 * v * (v + tau2) / tau2 * (math.log(1 / policy.alpha) + 0.5 * math.log((v + tau2) / v))
    )
    d = canary.rate() - champion.rate()
    return Interval(d, max(-1.0, d - radius), min(1.0, d + radius))


def decide(champion: ArmCounts, canary: ArmCounts, policy: CanarySpec) -> Verdict:
    """The verdict now; "continue" until the interval clears -margin or the budget ends."""
    if min(champion.n, canary.n) < policy.min_per_arm:
        return "rollback" if canary.n >= policy.max_per_arm else "continue"
    ci = interval(champion, canary, policy)
    if ci.low > -policy.margin:
        return "promote"
    if ci.high < -policy.margin:
        return "rollback"
    return "rollback" if canary.n >= policy.max_per_arm else "continue"
