"""Recovery after a shift against ratings used (services/refinery/demo/recovery.py): the new
domain's quality after one retraining on N ratings of its traffic, next to the champion's
quality before the shift, with the training levers as flags.

    python -m bench.recovery                          # the demo's task, 100..500 ratings
    python -m bench.recovery --domain fitness         # the shift the demo never plays
    python -m bench.recovery --rounds 2 --weight 1 --epochs 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from refinery.common.settings import REPO_ROOT
from refinery.common.task import load_task
from refinery.demo.recovery import RecoveryLab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", type=Path, default=REPO_ROOT / "refinery.yaml")
    parser.add_argument("--old", default="retail", help="the champion's domain")
    parser.add_argument("--domain", default="smart_home", help="the new domain")
    parser.add_argument("--ratings", default="100,200,300,400,500")
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=1)
    parser.add_argument("--epochs", type=int, help="override training.epochs")
    parser.add_argument("--lr", type=float, help="override training.learning_rate")
    parser.add_argument("--weight", type=int, help="override training.feedback_weight")
    parser.add_argument("--patience", type=int, help="override training.early_stopping_patience")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--old-ratings",
        type=int,
        default=0,
        help="old-domain ratings before the shift (demo: ~750)",
    )
    args = parser.parse_args()

    task = load_task(args.task)
    overrides: dict[str, Any] = {
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "feedback_weight": args.weight,
        "early_stopping_patience": args.patience,
    }
    spec = task.training.model_copy(update={k: v for k, v in overrides.items() if v})
    task = task.model_copy(update={"training": spec})
    started = time.monotonic()
    lab = RecoveryLab(
        task, Path(tempfile.mkdtemp(prefix="refinery-recovery-")), args.old, args.domain
    )
    before = lab.before
    print(
        f"champion built in {time.monotonic() - started:.0f} s: {args.old} {before.old:.3f} "
        f"(pre-shift quality), {args.domain} {before.new:.3f}, golden {before.golden:.3f}; "
        f"training {spec.method}, {spec.epochs} epochs, lr {spec.learning_rate:g}, feedback "
        f"weight {spec.feedback_weight}, patience {spec.early_stopping_patience}, "
        f"rounds {args.rounds}, seed {args.seed}, old-domain ratings {args.old_ratings}, "
        f"test share {task.gate.test_share}",
        flush=True,
    )
    print(f"\n| ratings | {args.domain} | {args.old} | golden | recovered | epochs | seconds |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.ratings.split(",")):
        t = time.monotonic()
        point = lab.point(n, args.rounds, args.seed, args.old_ratings)
        s = point.scores
        print(
            f"| {n} | {s.new:.3f} | {s.old:.3f} | {s.golden:.3f} | "
            f"{point.recovered(before):.0%} | {point.epochs:.1f} | {time.monotonic() - t:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
