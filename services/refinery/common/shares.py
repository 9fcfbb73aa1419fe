"""Shares of evidence per source: how much of a count one API key or user may give.

Used wherever feedback is counted toward a decision: the monitor's new labels before a
trigger, the retrainer's training and test sets (refinery/retrainer/sources.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

Source = TypeVar("Source", bound=Hashable)


def share_cap(counts: Mapping[Source, int], share: float, uncapped: int = 0) -> dict[Source, int]:
    """How many each source may give so none is over ``share`` of the total (``counts``
    plus ``uncapped`` items that belong to no source).

    The largest cap ``c`` with ``c <= share * sum(min(n, c))``; a source with fewer than
    ``c`` keeps all. ``share`` 1 caps nothing, and neither do too few sources to define a
    share (fewer than ``1 / share``, where no cap is feasible): cutting a big honest source
    down to a small one's size would throw away the data that matters.
    """
    if len(counts) + (uncapped > 0) <= 1 or share >= 1:
        return dict(counts)

    def fits(c: int) -> bool:
        return c <= share * (uncapped + sum(min(n, c) for n in counts.values()))

    lo, hi = 0, max(counts.values())
    while lo < hi:  # the feasible caps are 0..c*: find c*
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    if lo == 0:
        return dict(counts)
    return {source: min(n, lo) for source, n in counts.items()}


def capped_total(counts: Mapping[Source, int], share: float) -> int:
    """The sum of ``counts`` with each source at most its cap."""
    return sum(share_cap(counts, share).values())
