"""Recovery after a shift against ratings used: the new domain's quality after retraining on
N ratings of its traffic, next to the champion's quality before the shift (the curve of
issue #12), with the training levers as flags.

    python -m bench.recovery                        # the demo's task, ratings 100..500
    python -m bench.recovery --task tests/data/recovery.yaml --domain travel
    python -m bench.recovery --rounds 2 --replay 1.0 --epochs 8

Offline and self-contained: a champion is built as ``refinery bootstrap`` builds the
offline base (tokenizer and model learned from the old domain's tickets); simulated users
rate its answers on the new domain as the demo's users do (thumbs-up when right, half the
thumbs-down with the right answer); each point trains a challenger with the retrainer's own
``split`` (annotation, source weighing, cleaning, the recent test share held out) and
``train``, and scores it on new-domain and old-domain test sets it never saw and on the
golden set. With ``--rounds 2`` the first half of the ratings trains a first challenger,
whose answers the second half of the ratings judges (a second refinement round), and the
final challenger learns from all of them.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.common.datasets import LabeledText
from services.common.events import ExampleEvent
from services.common.settings import REPO_ROOT
from services.common.task import TaskFile, load_task
from services.demo.corpus import generate
from services.demo.simulate import correction, judge


@dataclass(frozen=True)
class Scores:
    new: float  # accuracy (or the task's metric, 0-1) on the new domain's test set
    old: float  # on the old domain's test set
    golden: float


def _score(task: TaskFile, model: Any, tokenizer: Any, items: Sequence[LabeledText]) -> float:
    from services.retrainer.evaluation import score_outputs
    from services.retrainer.gate import main_metric

    outputs = _answers(task, model, tokenizer, items)
    scored = score_outputs(
        task.task,
        [i.prompt for i in items],
        [i.completion for i in items],
        outputs,
        [i.segment for i in items],
        metric=main_metric(task),
    )
    return sum(s.score for s in scored) / len(scored)


def _answers(task: TaskFile, model: Any, tokenizer: Any, items: Sequence[LabeledText]) -> list[str]:
    from services.retrainer.base_model import greedy_complete
    from services.retrainer.sequence import prompt_ids

    ids = [prompt_ids(tokenizer, i.prompt, i.messages) for i in items]
    return greedy_complete(model, tokenizer, ids, task.task.max_new_tokens)


def _ratings(
    task: TaskFile,
    items: Sequence[LabeledText],
    answers: Sequence[str],
    rng: random.Random,
    start: datetime,
) -> list[ExampleEvent]:
    """The demo's users on each answer: up when right, half the downs with the right answer."""
    out = []
    for n, (item, answer) in enumerate(zip(items, answers, strict=True)):
        up = judge(task.task, item.completion, answer, 60.0).up
        fixed = None if up or rng.random() >= 0.5 else correction(task.task, item.completion, rng)
        at = start + timedelta(seconds=n)
        out.append(
            ExampleEvent(
                feedback_id=f"f-{uuid.uuid4().hex}",
                prediction_id=f"p-{uuid.uuid4().hex}",
                prompt=item.prompt,
                messages=list(item.messages) if item.messages else None,
                completion=answer,
                model_version="1",
                segment=item.segment,
                rating="up" if up else "down",
                correction=fixed,
                user=f"user-{rng.randrange(500)}",
                predicted_at=at,
                rated_at=at,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", type=Path, default=REPO_ROOT / "refinery.yaml")
    parser.add_argument("--old", default="retail", help="the champion's domain")
    parser.add_argument("--domain", default="smart_home", help="the new domain")
    parser.add_argument("--ratings", default="100,200,300,400,500")
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=1)
    parser.add_argument("--epochs", type=int, help="override training.epochs")
    parser.add_argument("--lr", type=float, help="override training.learning_rate")
    parser.add_argument("--modules", help="override training.target_modules (comma-separated)")
    parser.add_argument("--weight", type=int, help="override training.feedback_weight")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from services.retrainer.base_model import build_model, corpus_text, pretrain, train_tokenizer
    from services.retrainer.pipeline import split
    from services.retrainer.training import train

    task = load_task(args.task)
    updates: dict[str, Any] = {}
    if args.epochs:
        updates["epochs"] = args.epochs
    if args.lr:
        updates["learning_rate"] = args.lr
    if args.modules:
        updates["target_modules"] = args.modules.split(",")
    if args.weight:
        updates["feedback_weight"] = args.weight
    spec = task.training.model_copy(update=updates)
    task = task.model_copy(update={"training": spec})
    work = Path(tempfile.mkdtemp(prefix="refinery-recovery-"))
    seed = task.data.demo_seed
    seed_train = generate(task.task, task.data.demo_train_size, seed, domain=args.old)
    golden = generate(task.task, task.data.demo_golden_size, seed + 1, domain=args.old)
    old_test = generate(task.task, 300, seed + 2, domain=args.old)
    new_test = generate(task.task, 300, seed + 3, domain=args.domain)
    traffic = generate(task.task, 1000, seed + 4, domain=args.domain)

    started = time.monotonic()
    base = task.base_model
    tokenizer = train_tokenizer([corpus_text(e) for e in seed_train], base.vocab_size)
    champion = build_model(base, tokenizer, seed)
    pretrain(champion, tokenizer, seed_train, base, seed)
    base_dir = work / "base"
    champion.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    before = Scores(
        _score(task, champion, tokenizer, new_test),
        _score(task, champion, tokenizer, old_test),
        _score(task, champion, tokenizer, golden),
    )
    print(
        f"champion built in {time.monotonic() - started:.0f} s: {args.old} {before.old:.3f} "
        f"(pre-shift quality), {args.domain} {before.new:.3f}, golden {before.golden:.3f}; "
        f"training {spec.method}, {spec.epochs} epochs, lr {spec.learning_rate:g}, "
        f"modules {spec.target_modules}, feedback weight {spec.feedback_weight}, "
        f"rounds {args.rounds}",
        flush=True,
    )
    rng = random.Random(args.seed)
    t0 = datetime(2026, 11, 30, tzinfo=UTC)
    champion_answers = _answers(task, champion, tokenizer, traffic)

    def challenger(events: list[ExampleEvent], tag: str) -> Any:
        splits = split(task, events, seed_train, golden)
        result = train(base_dir, tokenizer, splits.train, splits.validation, spec, work / tag)
        result.model.eval()
        return result.model

    print(f"\n| ratings | {args.domain} | {args.old} | golden | recovered | seconds |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.ratings.split(",")):
        t = time.monotonic()
        if args.rounds == 1:
            events = _ratings(task, traffic[:n], champion_answers[:n], rng, t0)
        else:
            half = n // 2
            first = _ratings(task, traffic[:half], champion_answers[:half], rng, t0)
            interim = challenger(first, f"{n}-round1")
            later = traffic[half:n]
            events = first + _ratings(
                task,
                later,
                _answers(task, interim, tokenizer, later),
                rng,
                t0 + timedelta(hours=1),
            )
        model = challenger(events, f"{n}")
        got = Scores(
            _score(task, model, tokenizer, new_test),
            _score(task, model, tokenizer, old_test),
            _score(task, model, tokenizer, golden),
        )
        print(
            f"| {n} | {got.new:.3f} | {got.old:.3f} | {got.golden:.3f} | "
            f"{got.new / before.old:.0%} | {time.monotonic() - t:.0f} |",
            flush=True,
        )
        del model


if __name__ == "__main__":
    main()
