"""One retraining on 500 ratings of a shift the demo never plays brings the new domain to
95% of the champion's pre-shift quality, and the golden set drops at most a point.

Offline: the champion is built and trained here (services/refinery/demo/recovery.py), with the
demo's task file and training settings on the ``fitness`` domain's tickets.
"""

from __future__ import annotations

from pathlib import Path

from refinery.common.settings import REPO_ROOT
from refinery.common.task import load_task
from refinery.demo.recovery import RecoveryLab


def test_500_ratings_of_an_unseen_shift_recover_95_percent_of_pre_shift_quality(
    tmp_path: Path,
) -> None:
    lab = RecoveryLab(load_task(REPO_ROOT / "refinery.yaml"), tmp_path, "retail", "fitness")
    before = lab.before
    assert before.new < 0.8 * before.old  # a real shift: the champion fails the new domain
    point = lab.point(500)
    print(
        f"fitness {before.new:.3f} -> {point.scores.new:.3f} ({point.recovered(before):.1%} of "
        f"retail {before.old:.3f}); golden {before.golden:.3f} -> {point.scores.golden:.3f}"
    )
    assert point.recovered(before) >= 0.95
    assert point.scores.golden >= before.golden - 0.01
