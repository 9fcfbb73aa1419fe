"""``refinery review``: a small annotation queue for people.

It lists the thumbs-down examples that have no correction yet (from anyone), oldest
first, shows the prompt and the model's answer, and asks for the right one. An answer is
sent as reviewer feedback on the same prediction (``source="reviewer"``, its own
``feedback_id``), so the monitor joins it like any rating and the retrainer sees it as a
reviewer's label (``label_source="reviewer"``), ranked above users' corrections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.common.events import ExampleEvent, FeedbackEvent
from services.common.kafka import EventProducer
from services.common.settings import Settings
from services.common.task import TaskObjective
from services.common.topics import Stream
from services.retrainer.collect import end_offsets, read_examples


@dataclass(frozen=True)
class ReviewResult:
    queued: int
    labeled: int
    skipped: int


def queue(examples: list[ExampleEvent]) -> list[ExampleEvent]:
    """Thumbs-down examples whose prediction has no correction from anyone, oldest first."""
    corrected = {e.prediction_id for e in examples if e.correction and e.correction.strip()}
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
    ask: Callable[[str], str],
    show: Callable[[str], None],
    reviewer: str,
    limit: int | None = None,
) -> ReviewResult:
    examples, _ = read_examples(settings, end_offsets(settings))
    pending = queue(examples)[:limit] if limit else queue(examples)
    show(f"{len(pending)} thumbs-down example(s) without a correction")
    labeled = skipped = 0
    hint = f"one of {', '.join(task.labels)}" if task.kind == "classification" else "the answer"
    with EventProducer(settings) as producer:
        for i, example in enumerate(pending, 1):
            show(
                f"\n[{i}/{len(pending)}] {example.segment or '-'}, model v{example.model_version}\n"
                f"{example.prompt}{example.completion}   <- the model's answer"
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
