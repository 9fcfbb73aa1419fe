"""The canary's sequential test on simulated thumbs: how often it promotes a challenger
that is no better (A/A), and how many ratings it needs to decide a real difference.

    python -m bench.canary                  # 2,000 A/A canaries and the effect table
    python -m bench.canary --runs 5000 --share 0.2

Each simulated canary draws ratings one at a time, the challenger's with probability
``--share``, and asks the judge (services/refinery/retrainer/canary.py, the task file's defaults)
after every rating, as a judge polling live traffic would at its most eager.
"""

from __future__ import annotations

import argparse
import random
import statistics

from refinery.common.task import CanarySpec
from refinery.retrainer.canary import ArmCounts, Verdict, decide


def one_canary(
    p_champion: float, p_canary: float, share: float, spec: CanarySpec, rng: random.Random
) -> tuple[Verdict, int]:
    """Verdict and the canary's ratings when it came (at the budget: rollback)."""
    champion, canary = ArmCounts(), ArmCounts()
    while True:
        if rng.random() < share:
            canary = canary.add(rng.random() < p_canary)
        else:
            champion = champion.add(rng.random() < p_champion)
        verdict = decide(champion, canary, spec)
        if verdict != "continue":
            return verdict, canary.n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--share", type=float, default=0.2, help="the canary's share")
    parser.add_argument("--p", type=float, default=0.8, help="the champion's thumbs-up rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    spec = CanarySpec(share=args.share)
    rng = random.Random(args.seed)

    aa = [one_canary(args.p, args.p, args.share, spec, rng) for _ in range(args.runs)]
    promoted = sum(v == "promote" for v, _ in aa)
    print(
        f"A/A, thumbs-up {args.p:.2f} on both arms, canary share {args.share:g}, "
        f"alpha {spec.alpha:g}, margin {spec.margin:g}, checked after every rating, "
        f"{args.runs} canaries:"
    )
    print(
        f"  false promotions {promoted} ({promoted / args.runs:.2%}); rolled back as worse "
        f"{sum(v == 'rollback' and n < spec.max_per_arm for v, n in aa)}; ended at the "
        f"budget of {spec.max_per_arm} canary ratings {sum(n >= spec.max_per_arm for _, n in aa)}"
    )
    print("\n| canary minus champion | runs | promoted | rolled back | canary ratings (median) |")
    print("|---|---|---|---|---|")
    for delta in (-0.3, -0.1, 0.1, 0.3):
        p_canary = min(1.0, max(0.0, args.p + delta))
        runs = max(200, args.runs // 10)
        out = [one_canary(args.p, p_canary, args.share, spec, rng) for _ in range(runs)]
        print(
            f"| {delta:+.1f} | {runs} | {sum(v == 'promote' for v, _ in out)} | "
            f"{sum(v == 'rollback' for v, _ in out)} | "
            f"{statistics.median(n for _, n in out):.0f} |"
        )


if __name__ == "__main__":
    main()
