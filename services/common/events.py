"""Event models: the pydantic mirror of ``schemas/*.v1.json``, one class per Kafka value.

The JSON Schema files are what other languages and tools read; ``tests/common/test_events.py``
fails when a model and its file disagree (``refinery schemas --write`` regenerates the files).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Event(BaseModel):
    """Policy for every event: unknown fields are errors, ids and timestamps default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: file stem in schemas/ (``<name>.v<version>.json``)
    schema_name: ClassVar[str]

    event_id: str = Field(default_factory=new_id, description="UUID of this event")
    schema_version: Literal[1] = 1
    occurred_at: AwareDatetime = Field(
        default_factory=utc_now, description="when it happened, UTC, RFC 3339"
    )

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class SamplingParams(BaseModel):
    """The sampling parameters a prediction was generated with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None


class PredictionEvent(Event):
    """One answer the gateway gave (topic ``predictions``, key ``prediction_id``)."""

    schema_name = "prediction"

    prediction_id: str
    endpoint: Literal["completions", "chat.completions"]
    prompt: str
    completion: str
    model: str = Field(description="registered model name")
    model_version: str = Field(description="registry version that answered")
    served_name: str = Field(description="name vLLM served it under (<model>-v<version>)")
    params: SamplingParams = Field(default_factory=SamplingParams)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_ms: float = Field(ge=0)
    segment: str | None = None
    user: str | None = None


class FeedbackEvent(Event):
    """A thumbs-up/down on a prediction (topic ``feedback``, key ``prediction_id``)."""

    schema_name = "feedback"

    feedback_id: str = Field(
        description="same for the same prediction and user: a later rating replaces an earlier one"
    )
    prediction_id: str
    rating: Literal["up", "down"]
    comment: str | None = None
    correction: str | None = Field(default=None, description="the answer that should have been")
    user: str | None = None
    source: Literal["user", "reviewer"] = "user"


class ExampleEvent(Event):
    """A prediction joined with its latest feedback: one labeled example (topic ``examples``)."""

    schema_name = "example"

    feedback_id: str = Field(description="key: a later example with the same id replaces this one")
    prediction_id: str
    prompt: str
    completion: str
    model_version: str
    segment: str | None = None
    rating: Literal["up", "down"]
    correction: str | None = None
    comment: str | None = None
    user: str | None = None
    label_source: Literal["user", "reviewer"] = "user"
    predicted_at: AwareDatetime
    rated_at: AwareDatetime


class DriftMetric(BaseModel):
    """One column's drift test in a window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    method: str
    score: float = Field(description="p-value or distance, as `method` defines")
    threshold: float
    drifted: bool


class AlertEvent(Event):
    """Drift found in a closed window (topic ``alerts``)."""

    schema_name = "alert"

    window_start: AwareDatetime
    window_end: AwareDatetime
    window_size: int = Field(ge=0, description="predictions in the window")
    drifted_columns: list[str]
    metrics: list[DriftMetric]
    reference_version: str = Field(description="champion version the reference belongs to")
    report_url: str | None = None
    severity: Literal["warning", "critical"] = "warning"


class TriggerEvent(Event):
    """A request to retrain (topic ``triggers``, key ``trigger_id``)."""

    schema_name = "trigger"

    trigger_id: str = Field(description="idempotency key: the same id trains once")
    reason: str
    requested_by: Literal["monitor", "cli"]
    window_start: AwareDatetime | None = None
    window_end: AwareDatetime | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


class ModelEvent(Event):
    """A model version changed state (topic ``models``, key = registered model name)."""

    schema_name = "model"

    model: str
    version: str
    action: Literal["evaluated", "promoted", "rejected", "rolled_back"]
    served_name: str = Field(description="immutable name to serve it under")
    artifact_uri: str
    kind: Literal["base", "lora"]
    base_version: str | None = Field(default=None, description="base a LoRA version applies to")
    previous_version: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)


EVENT_TYPES: tuple[type[Event], ...] = (
    PredictionEvent,
    FeedbackEvent,
    ExampleEvent,
    AlertEvent,
    TriggerEvent,
    ModelEvent,
)


def schema_of(event_type: type[Event]) -> dict[str, Any]:
    """The JSON Schema of an event type, as written to ``schemas/<name>.v1.json``."""
    schema = event_type.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://refinery.dev/schemas/{event_type.schema_name}.v1.json"
    return schema
