"""Who the feedback comes from: the poisoning defence between annotation and cleaning
(limits in the task file's ``feedback`` section).

Feedback is data anyone with a key can send, so before it is trained on or tested against:
- one prediction is one example: more ratings of one answer (under many user names) do
  not weigh more; a reviewer's label wins, else the newest rating;
- a user's correction that ``hold_min_contradictions`` independent users contradict (a
  thumbs-up of another answer, or another correction, to the same prompt; a seed label
  counts as one), and that more contradict than support, is held for review;
- no named user gives more than ``max_user_share`` of the rated examples, and (when set
  below 1) no API key more than ``max_key_share``: the newest of an over-share source are
  kept. Too few sources to define a share, or ratings naming no one, are not capped.
The same caps shape the recent test set, so one source cannot grade the challenger either.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from refinery.common.shares import share_cap
from refinery.common.task import FeedbackSpec, TaskObjective
from refinery.retrainer.clean import normalize
from refinery.retrainer.examples import TrainingExample

# Free text: two answers say the same thing when this similar (difflib ratio, 0-1).
SAME_ANSWER = 0.6


@dataclass(frozen=True)
class SourceReport:
    input: int
    superseded: int  # further ratings of a prediction already rated
    held: int  # corrections held for review
    capped_key: int  # over a key's share
    capped_user: int  # over a user's share
    output: int
    keys: int  # distinct API keys that rated
    users: int  # distinct users that rated

    def as_metrics(self) -> dict[str, float]:
        return {f"sources_{k}": float(v) for k, v in self.__dict__.items()}


def _when(example: TrainingExample) -> float:
    return example.at.timestamp() if example.at is not None else 0.0


def one_per_prediction(examples: Sequence[TrainingExample]) -> list[TrainingExample]:
    """One example per rated prediction: the reviewer's, else the newest; in input order."""
    best: dict[str, int] = {}
    for index, example in enumerate(examples):
        if example.prediction_id is None:
            continue
        k = example.prediction_id
        other = examples[best[k]] if k in best else None
        rank = (example.source == "reviewer", _when(example))
        if other is None or rank > (other.source == "reviewer", _when(other)):
            best[k] = index
    chosen = set(best.values())
    return [e for i, e in enumerate(examples) if e.prediction_id is None or i in chosen]


def cap_share(
    examples: Sequence[TrainingExample],
    source: Callable[[TrainingExample], Hashable],
    share: float,
) -> list[TrainingExample]:
    """Keep at most each source's cap (``share_cap``), its newest; in input order. A source
    of None (no key, no user name) is nobody in particular: never capped."""
    by_source: dict[Hashable, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        if source(example) is not None:
            by_source[source(example)].append(index)
    kept = {i for i, e in enumerate(examples) if source(e) is None}
    caps = share_cap({s: len(ix) for s, ix in by_source.items()}, share, uncapped=len(kept))
    for s, indices in by_source.items():
        newest = sorted(indices, key=lambda i: _when(examples[i]))
        kept.update(newest[len(newest) - caps[s] :] if caps[s] else [])
    return [e for i, e in enumerate(examples) if i in kept]


def named_rater(example: TrainingExample) -> Hashable:
    """The user to cap, or None for a rating that names no user."""
    return example.rater if example.user else None


def _same_answer(task: TaskObjective, a: str, b: str) -> bool:
    if task.kind == "classification":
        return task.parse_label(a) == task.parse_label(b)
    a, b = normalize(a), normalize(b)
    return a == b or SequenceMatcher(None, a, b).ratio() >= SAME_ANSWER


def contradicted(
    examples: Sequence[TrainingExample],
    task: TaskObjective,
    min_contradictions: int,
    seed_answers: Mapping[str, str] | None = None,
) -> set[str]:
    """Ids of user corrections that at least ``min_contradictions`` independent users
    contradict, and more than support: those are held for review."""
    by_prompt: dict[str, list[TrainingExample]] = defaultdict(list)
    for example in examples:
        if example.positive:  # a thumbs-up or a correction says what the answer is
            by_prompt[normalize(example.prompt)].append(example)
    held: set[str] = set()
    for prompt, votes in by_prompt.items():
        seed = (seed_answers or {}).get(prompt)
        for claim in votes:
            if claim.source != "correction":
                continue
            against: set[Hashable] = (
                {"seed"} if seed and not _same_answer(task, seed, claim.target) else set()
            )
            support: set[Hashable] = set()
            for vote in votes:
                if vote.rater == claim.rater:
                    continue  # the same user again is not independent
                agrees = _same_answer(task, vote.target, claim.target)
                (support if agrees else against).add(vote.rater)
            if len(against) >= min_contradictions and len(against) > len(support):
                held.add(claim.example_id)
    return held


def curate(
    feedback: Sequence[TrainingExample],
    task: TaskObjective,
    spec: FeedbackSpec,
    seed_answers: Mapping[str, str] | None = None,
) -> tuple[list[TrainingExample], list[TrainingExample], SourceReport]:
    """The feedback that may be used (kept), the corrections held for review, and a report."""
    single = one_per_prediction(feedback)
    held_ids = contradicted(single, task, spec.hold_min_contradictions, seed_answers)
    held = [e for e in single if e.example_id in held_ids]
    trusted = [e for e in single if e.example_id not in held_ids]
    by_key = cap_share(trusted, lambda e: e.key_id, spec.max_key_share)
    kept = cap_share(by_key, named_rater, spec.max_user_share)
    report = SourceReport(
        input=len(feedback),
        superseded=len(feedback) - len(single),
        held=len(held),
        capped_key=len(trusted) - len(by_key),
        capped_user=len(by_key) - len(kept),
        output=len(kept),
        keys=len({e.key_id for e in feedback}),
        users=len({e.rater for e in feedback}),
    )
    return kept, held, report
