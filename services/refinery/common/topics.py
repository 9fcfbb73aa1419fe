"""Topic names and the event type each topic carries; the only place topic names are built."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from refinery.common.events import (
    AlertEvent,
    DecisionEvent,
    Event,
    ExampleEvent,
    FeedbackEvent,
    ModelEvent,
    PredictionEvent,
    TriggerEvent,
)
from refinery.common.settings import Settings


class Stream(StrEnum):
    """The logical streams; their topic names are ``<prefix>.<stream>``."""

    PREDICTIONS = "predictions"
    FEEDBACK = "feedback"
    EXAMPLES = "examples"
    ALERTS = "alerts"
    TRIGGERS = "triggers"
    MODELS = "models"
    DECISIONS = "decisions"


STREAM_EVENTS: dict[Stream, type[Event]] = {
    Stream.PREDICTIONS: PredictionEvent,
    Stream.FEEDBACK: FeedbackEvent,
    Stream.EXAMPLES: ExampleEvent,
    Stream.ALERTS: AlertEvent,
    Stream.TRIGGERS: TriggerEvent,
    Stream.MODELS: ModelEvent,
    Stream.DECISIONS: DecisionEvent,
}

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topics:
    """Topic names for one deployment (the prefix comes from settings)."""

    prefix: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(settings.topic_prefix)

    def name(self, stream: Stream) -> str:
        return f"{self.prefix}.{stream.value}"

    def dlq(self, stream: Stream) -> str:
        return self.name(stream) + DLQ_SUFFIX

    def all_names(self) -> list[str]:
        """Every topic Refinery writes, dead-letter topics included."""
        return [n for s in Stream for n in (self.name(s), self.dlq(s))]

    def stream_of(self, topic: str) -> Stream:
        for stream in Stream:
            if self.name(stream) == topic:
                return stream
        raise KeyError(f"{topic!r} is not a Refinery topic under prefix {self.prefix!r}")
