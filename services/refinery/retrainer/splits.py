"""The data of one retraining run: annotated feedback and the replayed seed data, split
into train, validation and a recent test set by time, with sources weighed and cleaned.

Nothing whose prompt (normalized) is in a test set is trained on; the newest rated share is
the test split, so the gate judges the challenger on the traffic it will serve next.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from refinery.common.datasets import LabeledText
from refinery.common.events import ExampleEvent
from refinery.common.task import TaskFile, TrainingSpec
from refinery.retrainer.clean import CleanReport, clean, normalize
from refinery.retrainer.examples import TrainingExample, annotate, from_seed
from refinery.retrainer.sources import SourceReport, cap_share, curate, named_rater


@dataclass(frozen=True)
class Splits:
    """The data of one run: train and validation from the pool, test from recent traffic."""

    train: list[TrainingExample]
    validation: list[TrainingExample]
    recent_test: list[TrainingExample]
    golden: list[LabeledText]
    pool_report: CleanReport
    test_report: CleanReport
    held_out_overlap: int
    held: list[TrainingExample]  # corrections held for review (sources.py)
    source_report: SourceReport


def split(
    task: TaskFile,
    feedback: Sequence[ExampleEvent],
    seed: Sequence[LabeledText],
    golden: Sequence[LabeledText],
    since: datetime | None = None,
) -> Splits:
    """Annotate, weigh sources (one rating per answer, contradicted corrections held, shares
    capped), take the newest rated share as the recent test split (no source over its share
    there either), clean, split off validation. Nothing whose prompt (normalized) is in a
    test set is trained on.

    Examples rated since the drift began (``since``, the trigger's ``window_start``; None:
    all feedback) appear ``training.feedback_weight`` times (:func:`feedback_repeats`) in
    the training and validation splits; the replayed seed data and older feedback, which
    the champion already learned from or answered well, once: what changed is what the
    challenger must learn."""
    rated = sorted((annotate(e) for e in feedback), key=lambda e: (e.at, e.example_id))
    seed_answers = {normalize(s.prompt): s.completion for s in seed}
    annotated, held, source_report = curate(rated, task.task, task.feedback, seed_answers)
    positives = [e for e in annotated if e.positive]
    n_test = round(len(positives) * task.gate.test_share)
    newest = positives[len(positives) - n_test :] if n_test else []
    newest = cap_share(newest, lambda e: e.key_id, task.feedback.max_key_share)
    newest = cap_share(newest, named_rater, task.feedback.max_user_share)
    test_ids = {e.example_id for e in newest}
    recent_raw = [e for e in annotated if e.example_id in test_ids]
    recent_test, test_report = clean(recent_raw, task.task, task.cleaning)
    held_out = {normalize(e.prompt) for e in recent_raw} | {normalize(g.prompt) for g in golden}
    pool_raw = [from_seed(s) for s in seed] + [e for e in annotated if e.example_id not in test_ids]
    pool = [e for e in pool_raw if normalize(e.prompt) not in held_out]
    cleaned, pool_report = clean(pool, task.task, task.cleaning)
    rng = random.Random(task.training.seed)
    order = list(range(len(cleaned)))
    rng.shuffle(order)
    n_val = max(1, round(len(cleaned) * task.training.validation_share))
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(cleaned) if i not in val_idx]
    validation = [e for i, e in enumerate(cleaned) if i in val_idx]

    # Validation weighs sources as training does: early stopping then watches the new
    # traffic's loss as much as training counts it, not mostly the replayed seed's.
    def recent(e: TrainingExample) -> bool:
        return e.source != "seed" and (since is None or e.at is None or e.at >= since)

    weight = feedback_repeats(task.training, sum(map(recent, cleaned)), len(cleaned))
    train += [e for e in train if recent(e)] * (weight - 1)
    validation += [e for e in validation if recent(e)] * (weight - 1)
    return Splits(
        train=train,
        validation=validation,
        recent_test=recent_test,
        golden=list(golden),
        pool_report=pool_report,
        test_report=test_report,
        held_out_overlap=len(pool_raw) - len(pool),
        held=held,
        source_report=source_report,
    )


def feedback_repeats(spec: TrainingSpec, recent: int, pool: int) -> int:
    """How many times each recent example is seen: ``feedback_weight``, fewer when that
    would make the recent examples more than ``max_feedback_ratio`` times the replayed
    rest (seed data, older feedback). Ratings pile up while a shift goes on, so a later
    round learns from more of them but costs about what the first did."""
    replayed = pool - recent
    if recent == 0 or spec.max_feedback_ratio is None or replayed == 0:
        return spec.feedback_weight
    return max(1, min(spec.feedback_weight, round(spec.max_feedback_ratio * replayed / recent)))


def write_jsonl(path: Path, items: Sequence[TrainingExample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for e in items:
            row = asdict(e)
            row["at"] = e.at.isoformat() if e.at else None
            # A chat example's turns are pydantic models: written as the OpenAI messages.
            row["messages"] = [m.model_dump() for m in e.messages] if e.messages else None
            out.write(json.dumps(row) + "\n")


def frame(items: Sequence[TrainingExample]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [e.prompt for e in items],
            "target": [e.target for e in items],
            "positive": [e.positive for e in items],
            "source": [e.source for e in items],
            "segment": [e.segment or "" for e in items],
        }
    )
