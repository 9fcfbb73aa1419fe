"""Training examples as the retrainer sees them, and how feedback becomes one (annotation).

A thumbs-up keeps the model's completion as the target; a correction (by the user or a
reviewer) becomes the target; a thumbs-down without a correction is a negative: the
completion the model should not give (used by KTO, skipped by SFT). Seed data (the
champion's training set) is positive.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from refinery.common.datasets import LabeledText
from refinery.common.events import ChatTurn, ExampleEvent

Source = Literal["seed", "thumbs_up", "correction", "reviewer", "thumbs_down"]


@dataclass(frozen=True)
class TrainingExample:
    prompt: str
    target: str
    positive: bool
    source: Source
    segment: str | None = None
    at: datetime | None = None  # when it was rated; None for seed data
    example_id: str = ""
    # A chat example's conversation up to the answer; ``prompt`` is then its last user turn.
    messages: tuple[ChatTurn, ...] | None = None
    # Who rated it (feedback only): the prediction, the API key's fingerprint, the user.
    prediction_id: str | None = None
    key_id: str | None = None
    user: str | None = None

    @property
    def rater(self) -> tuple[str | None, str | None]:
        """One user: a user name means something only under the key that sent it."""
        return (self.key_id, self.user)

    def with_text(self, prompt: str, target: str) -> TrainingExample:
        return replace(self, prompt=prompt, target=target)


def annotate(event: ExampleEvent) -> TrainingExample:
    """One joined (prediction, rating) pair as a training example."""
    source: Source
    if event.correction is not None and event.correction.strip():
        source = "reviewer" if event.label_source == "reviewer" else "correction"
        target, positive = event.correction, True
    elif event.rating == "up":
        source, target, positive = "thumbs_up", event.completion, True
    else:
        source, target, positive = "thumbs_down", event.completion, False
    return TrainingExample(
        prompt=event.prompt,
        target=target,
        positive=positive,
        source=source,
        segment=event.segment,
        at=event.rated_at,
        example_id=event.event_id,
        messages=tuple(event.messages) if event.messages else None,
        prediction_id=event.prediction_id,
        key_id=event.key_id,
        user=event.user,
    )


def from_seed(item: LabeledText) -> TrainingExample:
    return TrainingExample(
        prompt=item.prompt,
        target=item.completion,
        positive=True,
        source="seed",
        segment=item.segment,
        messages=item.messages,
    )
