"""Event models: the pydantic mirror of ``schemas/*.v<N>.json``, one class per Kafka value.

The JSON Schema files are what other languages and tools read; ``tests/common/test_events.py``
fails when a model and its file disagree (``refinery schemas --write`` regenerates the files).

Producers write the newest version of each event; consumers also read the versions before
it (``parse_versioned``), upgraded to the newest, so records on a topic from before an
upgrade stay readable. Version 2 of predictions and examples keeps a chat conversation as
structured messages instead of flattened text; version 2 of feedback and 3 of examples
name the tenant and the fingerprint of the key that sent the rating; version 2 of alerts
names the drift episode and whether ops were notified.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError


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


class ChatTurn(BaseModel):
    """One message of a conversation, as the OpenAI chat API carries it (text content)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


def last_user_text(messages: list[ChatTurn]) -> str:
    """What a conversation asks now: the last user turn (what drift features look at)."""
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


class PredictionEvent(Event):
    """One answer the gateway gave (topic ``predictions``, key ``prediction_id``)."""

    schema_name = "prediction"

    schema_version: Literal[2] = 2  # type: ignore[assignment]
    prediction_id: str
    endpoint: Literal["completions", "chat.completions"]
    prompt: str = Field(
        description="the prompt of a completion; for chat, the last user message's text"
    )
    messages: list[ChatTurn] | None = Field(
        default=None, description="chat: the whole conversation sent, as structured messages"
    )
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
    shadow_of: str | None = Field(
        default=None,
        description="a shadow canary's answer, never returned: the id of the prediction the "
        "user got for the same request",
    )


class FeedbackEvent(Event):
    """A thumbs-up/down on a prediction (topic ``feedback``, key ``prediction_id``)."""

    schema_name = "feedback"

    schema_version: Literal[2] = 2  # type: ignore[assignment]
    feedback_id: str = Field(
        description="same for the same prediction and user: a later rating replaces an earlier one"
    )
    prediction_id: str
    rating: Literal["up", "down"]
    comment: str | None = None
    correction: str | None = Field(default=None, description="the answer that should have been")
    user: str | None = None
    source: Literal["user", "reviewer"] = "user"
    tenant: str | None = Field(default=None, description="the app whose key sent it")
    key_id: str | None = Field(
        default=None, description="fingerprint of the API key that sent it (not the key)"
    )


class ExampleEvent(Event):
    """A prediction joined with its latest feedback: one labeled example (topic ``examples``)."""

    schema_name = "example"

    schema_version: Literal[3] = 3  # type: ignore[assignment]
    feedback_id: str = Field(description="key: a later example with the same id replaces this one")
    prediction_id: str
    prompt: str
    messages: list[ChatTurn] | None = Field(
        default=None, description="chat: the conversation the completion answered"
    )
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
    tenant: str | None = Field(default=None, description="the app whose key sent the rating")
    key_id: str | None = Field(default=None, description="fingerprint of the rating's API key")


class DriftMetric(BaseModel):
    """One column's drift test in a window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    method: str
    score: float = Field(description="p-value or distance, as `method` defines")
    threshold: float
    drifted: bool


#: Why ops were told of an alert (the webhook): a drift episode began, it rose (severity or
#: columns), it lasted another ``alert_repeat_minutes``, or it ended.
Notice = Literal["opened", "escalated", "reminder", "resolved"]
Severity = Literal["warning", "critical"]
#: A drift episode's kind: ``quality`` (what the model is asked, what it answers, how users
#: rate it: retraining may fix it) or ``operational`` (how the service runs: it may not).
EpisodeKind = Literal["quality", "operational"]
EPISODE_KINDS: tuple[EpisodeKind, ...] = ("quality", "operational")

#: Columns that say how the service runs, not what it sees: a slow host (say, training on
#: the same cores) drifts latency, and retraining would not fix that. Alerted in episodes
#: of their own, never triggered.
OPERATIONAL_COLUMNS = frozenset({"latency_ms"})


def episode_kind(column: str) -> EpisodeKind:
    return "operational" if column in OPERATIONAL_COLUMNS else "quality"


def columns_of(kind: EpisodeKind, columns: list[str]) -> list[str]:
    """The ``columns`` of episodes of ``kind``, in their order."""
    return [column for column in columns if episode_kind(column) == kind]


class AlertEvent(Event):
    """Drift found in a closed window, or the end of a drift episode (topic ``alerts``).

    A drifted window has one per kind of episode it drifted in (``episode_kind``, each with
    that kind's columns): a latency drift under load goes on while the data's drift ends.
    ``notice`` says whether ops were told of it and why (the webhook posts once per
    episode, not once per window). A ``resolved`` alert is the stable window that ended
    its episode: no drifted columns of its kind."""

    schema_name = "alert"

    schema_version: Literal[3] = 3  # type: ignore[assignment]
    episode_kind: EpisodeKind = Field(
        default="quality", description="the drift episode it belongs to, and its columns' kind"
    )
    window_start: AwareDatetime
    window_end: AwareDatetime
    window_size: int = Field(ge=0, description="predictions in the window")
    drifted_columns: list[str]
    metrics: list[DriftMetric]
    reference_version: str = Field(description="champion version the reference belongs to")
    report_url: str | None = None
    severity: Severity = Field(
        default="warning", description="resolved: the highest its episode reached"
    )
    episode_start: AwareDatetime | None = Field(
        default=None, description="start of the first drifted window of its drift episode"
    )
    notice: Notice | None = Field(
        default=None, description="why ops were notified of it; none: its episode goes on"
    )

    @property
    def resolved(self) -> bool:
        return self.notice == "resolved"


class TriggerEvent(Event):
    """A request to retrain (topic ``triggers``, key ``trigger_id``)."""

    schema_name = "trigger"

    trigger_id: str = Field(description="idempotency key: the same id trains once")
    reason: str
    requested_by: Literal["monitor", "cli"]
    window_start: AwareDatetime | None = None
    window_end: AwareDatetime | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)

    @property
    def kind(self) -> str:
        """Why it was asked: ``manual`` (the CLI), or the monitor's ``drift``, ``retry``
        (the drift goes on after a rejection) or ``refinement`` (the promoted model lags)."""
        if self.requested_by == "cli":
            return "manual"
        if "refinement_round" in self.evidence:
            return "refinement"
        return "retry" if "retry" in self.evidence else "drift"


class ModelEvent(Event):
    """A model version changed state (topic ``models``, key = registered model name)."""

    schema_name = "model"

    model: str
    version: str
    action: Literal[
        "evaluated", "promoted", "rejected", "rolled_back", "canary_started", "canary_stopped"
    ]
    served_name: str = Field(description="immutable name to serve it under")
    artifact_uri: str
    kind: Literal["base", "lora"]
    base_version: str | None = Field(default=None, description="base a LoRA version applies to")
    previous_version: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)

    @property
    def switches_champion(self) -> bool:
        """A new champion serves (and is the drift monitor's new reference)."""
        return self.action in ("promoted", "rolled_back")

    @property
    def changes_routes(self) -> bool:
        """What the gateway serves changes: the champion, or a canary beside it."""
        return self.switches_champion or self.action in ("canary_started", "canary_stopped")


class DecisionEvent(Event):
    """Something ops should hear about was decided (topic ``decisions``, key = subject):
    retraining started or failed, a challenger promoted or rejected, a rollback, a canary
    started or stopped, a process restarted. The monitor posts each to the webhook;
    ``refinery alerts`` prints them beside the drift alerts."""

    schema_name = "decision"

    action: Literal[
        "retraining_started",
        "retraining_failed",
        "promoted",
        "rejected",
        "rolled_back",
        "canary_started",
        "canary_stopped",
        "process_restarted",
        "process_restart_failed",
    ]
    subject: str = Field(description="the registered model, or the process restarted")
    summary: str = Field(description="one line for people")
    severity: Literal["info", "warning", "critical"] = "info"
    version: str | None = Field(default=None, description="the model version decided on")
    trigger_id: str | None = None
    run_url: str | None = Field(default=None, description="the MLflow run behind it")
    reasons: list[str] = Field(default_factory=list)


class PredictionEventV1(Event):
    """One answer the gateway gave (topic ``predictions``, key ``prediction_id``)."""

    # Version 1, as published (a chat conversation flattened into ``prompt``): still read.
    model_config = ConfigDict(title="PredictionEvent")
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

    def upgrade(self) -> PredictionEvent:
        return PredictionEvent(**{**self.model_dump(), "schema_version": 2})


class FeedbackEventV1(Event):
    """A thumbs-up/down on a prediction (topic ``feedback``, key ``prediction_id``)."""

    # Version 1, as published (no tenant or key fingerprint): still read.
    model_config = ConfigDict(title="FeedbackEvent")
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

    def upgrade(self) -> FeedbackEvent:
        return FeedbackEvent(**{**self.model_dump(), "schema_version": 2})


class ExampleEventV2(Event):
    """A prediction joined with its latest feedback: one labeled example (topic ``examples``)."""

    # Version 2, as published (no tenant or key fingerprint): still read.
    model_config = ConfigDict(title="ExampleEvent")
    schema_name = "example"

    schema_version: Literal[2] = 2  # type: ignore[assignment]
    feedback_id: str = Field(description="key: a later example with the same id replaces this one")
    prediction_id: str
    prompt: str
    messages: list[ChatTurn] | None = Field(
        default=None, description="chat: the conversation the completion answered"
    )
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

    def upgrade(self) -> ExampleEvent:
        return ExampleEvent(**{**self.model_dump(), "schema_version": 3})


class ExampleEventV1(Event):
    """A prediction joined with its latest feedback: one labeled example (topic ``examples``)."""

    # Version 1, as published (no structured conversation): still read.
    model_config = ConfigDict(title="ExampleEvent")
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

    def upgrade(self) -> ExampleEvent:
        return ExampleEvent(**{**self.model_dump(), "schema_version": 3})


class AlertEventV1(Event):
    """Drift found in a closed window (topic ``alerts``)."""

    # Version 1, as published (no drift episode or notice): still read.
    model_config = ConfigDict(title="AlertEvent")
    schema_name = "alert"

    window_start: AwareDatetime
    window_end: AwareDatetime
    window_size: int = Field(ge=0, description="predictions in the window")
    drifted_columns: list[str]
    metrics: list[DriftMetric]
    reference_version: str = Field(description="champion version the reference belongs to")
    report_url: str | None = None
    severity: Literal["warning", "critical"] = "warning"

    def upgrade(self) -> AlertEvent:
        return AlertEventV2(**{**self.model_dump(), "schema_version": 2}).upgrade()


class AlertEventV2(Event):
    """Drift found in a closed window, or the end of a drift episode (topic ``alerts``).

    Every drifted window has one; ``notice`` says whether ops were told of it and why (the
    webhook posts once per episode, not once per window). A ``resolved`` alert is the
    stable window that ended its episode: no drifted columns."""

    # Version 2, as published (one drift episode of every column): still read.
    model_config = ConfigDict(title="AlertEvent")
    schema_name = "alert"

    schema_version: Literal[2] = 2  # type: ignore[assignment]
    window_start: AwareDatetime
    window_end: AwareDatetime
    window_size: int = Field(ge=0, description="predictions in the window")
    drifted_columns: list[str]
    metrics: list[DriftMetric]
    reference_version: str = Field(description="champion version the reference belongs to")
    report_url: str | None = None
    severity: Literal["warning", "critical"] = Field(
        default="warning", description="resolved: the highest its episode reached"
    )
    episode_start: AwareDatetime | None = Field(
        default=None, description="start of the first drifted window of its drift episode"
    )
    notice: Literal["opened", "escalated", "reminder", "resolved"] | None = Field(
        default=None, description="why ops were notified of it; none: its episode goes on"
    )

    def upgrade(self) -> AlertEvent:
        """Its one episode was operational if only operational columns drifted in it."""
        kinds = {episode_kind(column) for column in self.drifted_columns}
        kind = "operational" if kinds == {"operational"} else "quality"
        return AlertEvent(**{**self.model_dump(), "schema_version": 3, "episode_kind": kind})


# Older versions each event type still reads, by version number.
LEGACY_VERSIONS: dict[type[Event], dict[int, type[Any]]] = {
    PredictionEvent: {1: PredictionEventV1},
    FeedbackEvent: {1: FeedbackEventV1},
    ExampleEvent: {1: ExampleEventV1, 2: ExampleEventV2},
    AlertEvent: {1: AlertEventV1, 2: AlertEventV2},
}


def parse_versioned(event_type: type[Event], value: bytes | str | dict[str, Any]) -> Event:
    """Validate a record (JSON, or its decoded dict) of ``event_type`` in any version it
    still reads, as the newest version."""
    data: Any = value
    if not isinstance(value, dict):
        try:  # the newest version, as nearly every record is: parsed once
            return event_type.model_validate_json(value)
        except ValidationError:
            pass  # an older version, or invalid: read as below (the error says why)
        try:
            data = json.loads(value)
        except ValueError:
            data = None  # not JSON: the model's own validation says why, below
    legacy = LEGACY_VERSIONS.get(event_type, {})
    version = data.get("schema_version") if isinstance(data, dict) else None
    model: type[Any] = legacy.get(version, event_type) if isinstance(version, int) else event_type
    if isinstance(value, dict):
        parsed = model.model_validate(value)
    else:
        parsed = model.model_validate_json(value)
    return parsed.upgrade() if model is not event_type else parsed  # type: ignore[no-any-return]


EVENT_TYPES: tuple[type[Event], ...] = (
    PredictionEvent,
    FeedbackEvent,
    ExampleEvent,
    AlertEvent,
    TriggerEvent,
    ModelEvent,
    DecisionEvent,
)


# Every schema file in schemas/: the current types and the versions consumers still read.
SCHEMA_TYPES: tuple[type[Event], ...] = (
    *EVENT_TYPES,
    *(old for versions in LEGACY_VERSIONS.values() for old in versions.values()),
)


def schema_version_of(event_type: type[Event]) -> int:
    return int(event_type.model_fields["schema_version"].default)


def schema_file_name(event_type: type[Event]) -> str:
    return f"{event_type.schema_name}.v{schema_version_of(event_type)}.json"


def schema_of(event_type: type[Event]) -> dict[str, Any]:
    """The JSON Schema of an event type, as written to ``schemas/<name>.v<N>.json``."""
    schema = event_type.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://refinery.dev/schemas/{schema_file_name(event_type)}"
    return schema
