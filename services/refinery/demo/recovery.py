"""Recovery after a shift against ratings used, offline: what N ratings of a new domain buy.

A champion is built as ``refinery bootstrap`` builds the offline base (tokenizer and model
learned from the old domain's tickets); simulated users rate its answers on the new domain
as the demo's users do (thumbs-up when right, half the thumbs-down with the right answer);
a challenger is trained with the retrainer's own ``split`` (annotation, source weighing,
cleaning, the recent test share held out, feedback weighting) and ``train``, and scored
on new-domain and old-domain test sets it never saw and on the golden set. A second
refinement round trains a first challenger on the first half of the ratings and lets the
second half judge its answers; the final challenger learns from all of them.
``bench/recovery.py`` prints the curve; ``tests/demo/test_recovery.py`` holds the target.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from refinery.common.datasets import LabeledText
from refinery.common.events import ExampleEvent
from refinery.common.task import TaskFile
from refinery.demo.corpus import generate
from refinery.demo.simulate import correction, judge


@dataclass(frozen=True)
class Scores:
    """The task metric (0-1) on the three held-out sets."""

    new: float  # the new domain's test set
    old: float  # the old domain's test set
    golden: float


@dataclass(frozen=True)
class Point:
    """One point of the curve: a challenger trained on ``ratings`` ratings."""

    ratings: int
    scores: Scores
    epochs: float  # trained (early stopping may end it before the spec's epochs)

    def recovered(self, before: Scores) -> float:
        """The new domain's quality as a share of the champion's before the shift."""
        return self.scores.new / before.old


class RecoveryLab:
    """A champion of ``old`` and simulated users of ``new``, for training challengers."""

    def __init__(
        self, task: TaskFile, work: Path, old: str = "retail", new: str = "smart_home"
    ) -> None:
        from refinery.retrainer.base_model import (
            build_model,
            corpus_text,
            pretrain,
            train_tokenizer,
        )

        self.task = task
        self.work = work
        seed = task.data.demo_seed
        self.seed_train = generate(task.task, task.data.demo_train_size, seed, domain=old)
        self.golden = generate(task.task, task.data.demo_golden_size, seed + 1, domain=old)
        self.old_test = generate(task.task, 300, seed + 2, domain=old)
        self.new_test = generate(task.task, 300, seed + 3, domain=new)
        self.traffic = generate(task.task, 1000, seed + 4, domain=new)
        self.old_traffic = generate(task.task, 1000, seed + 5, domain=old)
        spec = task.base_model
        self.tokenizer = train_tokenizer([corpus_text(e) for e in self.seed_train], spec.vocab_size)
        self.champion = build_model(spec, self.tokenizer, seed)
        pretrain(self.champion, self.tokenizer, self.seed_train, spec, seed)
        self.base_dir = work / "base"
        self.champion.save_pretrained(self.base_dir)
        self.tokenizer.save_pretrained(self.base_dir)
        self.before = self.scores(self.champion)
        self._champion_answers = self.answers(self.champion, self.traffic)
        self._old_answers = self.answers(self.champion, self.old_traffic)

    def answers(self, model: Any, items: Sequence[LabeledText]) -> list[str]:
        """Greedy answers from the prompt ids vLLM would serve."""
        from refinery.retrainer.base_model import greedy_complete
        from refinery.retrainer.sequence import prompt_ids

        ids = [prompt_ids(self.tokenizer, i.prompt, i.messages) for i in items]
        return greedy_complete(model, self.tokenizer, ids, self.task.task.max_new_tokens)

    def score(self, model: Any, items: Sequence[LabeledText]) -> float:
        from refinery.retrainer.evaluation import score_outputs
        from refinery.retrainer.gate import main_metric

        scored = score_outputs(
            self.task.task,
            [i.prompt for i in items],
            [i.completion for i in items],
            self.answers(model, items),
            [i.segment for i in items],
            metric=main_metric(self.task),
        )
        return sum(s.score for s in scored) / len(scored)

    def scores(self, model: Any) -> Scores:
        return Scores(
            self.score(model, self.new_test),
            self.score(model, self.old_test),
            self.score(model, self.golden),
        )

    def rate(
        self,
        items: Sequence[LabeledText],
        answers: Sequence[str],
        rng: random.Random,
        start: datetime,
    ) -> list[ExampleEvent]:
        """The demo's users on each answer, as the monitor joins their ratings."""
        task = self.task.task
        out = []
        for n, (item, answer) in enumerate(zip(items, answers, strict=True)):
            up = judge(task, item.completion, answer, 60.0).up
            fixed = None if up or rng.random() >= 0.5 else correction(task, item.completion, rng)
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

    def challenger(
        self, events: list[ExampleEvent], tag: str, since: datetime | None = None
    ) -> tuple[Any, float]:
        """A challenger trained as the retrainer trains one (feedback since ``since``, the
        drift's start, weighted); and the epochs it ran."""
        from refinery.retrainer.splits import split
        from refinery.retrainer.training import train

        splits = split(self.task, events, self.seed_train, self.golden, since=since)
        result = train(
            self.base_dir,
            self.tokenizer,
            splits.train,
            splits.validation,
            self.task.training,
            self.work / tag,
        )
        result.model.eval()
        return result.model, result.epochs

    def point(self, ratings: int, rounds: int = 1, seed: int = 0, old_ratings: int = 0) -> Point:
        """Train on ``ratings`` ratings of the new domain (in one or two rounds) and score;
        ``old_ratings``: the old domain's ratings before the shift are in the snapshot too
        (as in the demo, where the first minute's traffic was rated)."""
        rng = random.Random(f"{seed}:{ratings}")
        t0 = datetime(2026, 11, 30, tzinfo=UTC)
        items = self.traffic[:ratings]
        old = self.old_traffic[:old_ratings]
        before = t0 - timedelta(seconds=len(old) + 1)
        history = self.rate(old, self._old_answers[:old_ratings], rng, before) if old else []
        if rounds == 1:
            events = history + self.rate(items, self._champion_answers[:ratings], rng, t0)
        else:
            half = ratings // 2
            events = history + self.rate(items[:half], self._champion_answers[:half], rng, t0)
            interim, _ = self.challenger(events, f"{ratings}-round1", since=t0)
            later = items[half:]
            events += self.rate(later, self.answers(interim, later), rng, t0 + timedelta(hours=1))
        model, epochs = self.challenger(events, f"{ratings}-r{rounds}", since=t0)
        return Point(ratings, self.scores(model), epochs)
