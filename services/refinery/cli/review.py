"""``refinery review``: a small annotation queue for people.

It lists the thumbs-down examples that have no correction yet (from anyone), and the
user corrections the retrainer holds back because other users contradict them
(``refinery/retrainer/sources.py``; the seed label's vote is left out here), oldest first,
shows the prompt, the model's answer and any held correction, and asks for the right one.
An answer is sent as reviewer feedback on the same prediction (``source="reviewer"``, its own
``feedback_id``), so the monitor joins it like any rating and the retrainer sees it as a
reviewer's label (``label_source="reviewer"``), ranked above users' corrections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from refinery.common.events import ExampleEvent, FeedbackEvent
from refinery.common.kafka import EventProducer
from refinery.common.settings import Settings
from refinery.common.task import FeedbackSpec, TaskObjective
from refinery.common.topics import Stream
from refinery.retrainer.collect import end_offsets, read_examples
from refinery.retrainer.examples import annotate
from refinery.retrainer.sources import contradicted, one_per_prediction


@dataclass(frozen=True)
class ReviewResult:
    queued: int
    labeled: int
    skipped: int


def held_corrections(
    examples: list[ExampleEvent], task: TaskObjective, spec: FeedbackSpec
) -> set[str]:
    """Event ids of the user corrections the retrainer would hold back (not train on)."""
    single = one_per_prediction([annotate(e) for e in examples])
    return contradicted(single, task, spec.hold_min_contradictions)


def queue(examples: list[ExampleEvent], held: set[str] | None = None) -> list[ExampleEvent]:
    """Thumbs-down examples whose prediction has no trusted correction from anyone (none,
    or only ``held`` ones), oldest first."""
    held = held or set()
    corrected = {
        e.prediction_id
        for e in examples
        if e.correction and e.correction.strip() and e.event_id not in held
    }
    waiting: dict[str, ExampleEvent] = {}
    for e in sorted(examples, key=lambda e: e.rated_at):
        if e.rating == "down" and e.prediction_id not in corrected:
            waiting.setdefault(e.prediction_id, e)
    return list(waiting.values())


def parse_answer(task: TaskObjective, answer: str) -> str | None:
    """The correction an answer means (None: skip). Labels are checked for classification."""
    if not answer.strip():
        return None
    return task.correction_target(answer)


def review(
    settings: Settings,
    task: TaskObjective,
    trust: FeedbackSpec,
    ask: Callable[[str], str],
    show: Callable[[str], None],
    reviewer: str,
    limit: int | None = None,
) -> ReviewResult:
    examples, _ = read_examples(settings, end_offsets(settings))
    held = held_corrections(examples, task, trust)
    pending = queue(examples, held)
    pending = pending[:limit] if limit else pending
    n_held = sum(e.event_id in held for e in pending)
    show(
        f"{len(pending)} thumbs-down example(s) without a trusted correction "
        f"({n_held} with a user's correction held back: other users contradict it)"
    )
    labeled = skipped = 0
    hint = f"one of {', '.join(task.labels)}" if task.kind == "classification" else "the answer"
    with EventProducer(settings) as producer:
        for i, example in enumerate(pending, 1):
            show(
                f"\n[{i}/{len(pending)}] {example.segment or '-'}, model v{example.model_version}\n"
                f"{example.prompt}{example.completion}   <- the model's answer"
                + (
                    f"\n{example.correction}   <- a user's correction, held: others contradict it"
                    if example.event_id in held
                    else ""
                )
            )
            while True:
                answer = ask(f"right answer ({hint}; enter skips, q quits): ")
                if answer.strip().lower() == "q":
                    return ReviewResult(len(pending), labeled, skipped)
                try:
                    correction = parse_answer(task, answer)
                    break
                except ValueError as exc:
                    show(str(exc))
            if correction is None:
                skipped += 1
                continue
            feedback = FeedbackEvent(
                feedback_id=f"{example.prediction_id}:reviewer",
                prediction_id=example.prediction_id,
                rating="down",
                correction=correction,
                user=reviewer,
                source="reviewer",
            )
            producer.send_and_wait(Stream.FEEDBACK, feedback, key=example.prediction_id)
            labeled += 1
    return ReviewResult(len(pending), labeled, skipped)
