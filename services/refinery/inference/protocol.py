"""HTTP bodies: the OpenAI request fields Refinery reads, feedback, model listings, the ops
commands, and the one error body every failure answers with (documented per route).

Requests allow extra OpenAI fields (``logprobs``, ``seed``, ...) and pass them to vLLM
untouched; the fields below are the ones the gateway checks or logs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from refinery.common.events import ChatTurn, SamplingParams


def _whole(value: object) -> object:
    """JSON Schema's integer includes 2.0: a float with no fraction is taken as that int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# After the bounds, so they stay in the JSON schema; strict mode still refuses "2" and true.
_WHOLE = BeforeValidator(_whole)
# vLLM refuses an empty stop string ("stop cannot contain an empty string").
StopString = Annotated[str, Field(min_length=1)]
Reason = Annotated[str, Field(min_length=1, max_length=1000, description="why; kept with it")]
#: ``n`` at most: each choice is generated, logged and kept like a request of its own.
MAX_CHOICES = 16


class _OpenAIRequest(BaseModel):
    # Strict: a value of the wrong JSON type is refused, not coerced ("stream": 0 is no bool).
    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    max_tokens: Annotated[int, Field(ge=1, le=4096), _WHOLE] | None = Field(
        default=None, description="at most the served model's context length (else 400)"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: StopString | list[StopString] | None = None
    # vLLM takes 64-bit seeds; past 2**53 JSON numbers lose precision in many parsers.
    seed: Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1), _WHOLE] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES), _WHOLE] = Field(
        default=1,
        description="choices to generate; each is a logged prediction of its own, rated "
        "by the prediction_id in its choice (the response's id is the first choice's)",
    )
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(default=None, max_length=256)
    # Refinery's own: which slice of traffic this is (product, tenant, ...), for drift by segment.
    segment: str | None = Field(default=None, max_length=128)

    @field_validator("n")
    @classmethod
    def _choices_need_sampling(cls, n: int, info: ValidationInfo) -> int:
        # vLLM refuses it too, as a 400 that does not say which field to change.
        if n > 1 and info.data.get("temperature") == 0:
            raise ValueError(
                "more than one choice needs a temperature above 0: greedy decoding gives "
                "every choice the same answer"
            )
        return n

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The schema, with the rule above in it: n > 1 only with a temperature above 0."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema["if"] = {"properties": {"n": {"minimum": 2}}, "required": ["n"]}
        schema["then"] = {
            "properties": {"temperature": {"anyOf": [{"exclusiveMinimum": 0}, {"type": "null"}]}}
        }
        return schema

    def sampling_params(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=stop,
            seed=self.seed,
        )

    def upstream_body(self, served_name: str) -> dict[str, Any]:
        """The body for vLLM: our model name, our fields removed, usage always reported."""
        body = self.model_dump(exclude_none=True, exclude={"segment", "model"})
        body["model"] = served_name
        if self.n > 1:  # usage counts all choices together; each choice's ids count its own
            body["return_token_ids"] = True
        if self.stream:
            body["stream_options"] = {**(self.stream_options or {}), "include_usage": True}
        return body

    @property
    def client_wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    @property
    def client_wants_token_ids(self) -> bool:
        """Did the client ask vLLM's ``return_token_ids`` itself (else the gateway's own
        request for them, with ``n`` > 1, is not passed on)?"""
        return (self.model_extra or {}).get("return_token_ids") is True


class CompletionRequest(_OpenAIRequest):
    """``POST /v1/completions``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "refinery-model",
                    "prompt": "Ticket: where is my parcel\nTeam:",
                    "max_tokens": 4,
                    "temperature": 0,
                    "user": "alice",
                    "segment": "retail",
                }
            ]
        }
    )

    prompt: str = Field(min_length=1, description="one prompt per request")


class TextPart(BaseModel):
    """A text part of a message's content (the only kind a text model takes)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined, as vLLM joins them)."""
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_OpenAIRequest):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "refinery-model",
                    "messages": [{"role": "user", "content": "Ticket: my hub is offline"}],
                    "max_tokens": 4,
                    "temperature": 0,
                }
            ]
        }
    )

    messages: list[ChatMessage] = Field(min_length=1)

    def turns(self) -> list[ChatTurn]:
        """The conversation as logged: structured messages with text content."""
        return [ChatTurn(role=m.role, content=m.text()) for m in self.messages]


class FeedbackCreate(BaseModel):
    """``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prediction_id: str = Field(min_length=1, max_length=128)
    rating: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=4000)
    correction: str | None = Field(default=None, max_length=8000)
    user: str | None = Field(default=None, max_length=256)


class FeedbackAccepted(BaseModel):
    feedback_id: str
    prediction_id: str
    status: Literal["accepted"] = "accepted"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "refinery"
    served_name: str
    version: str
    kind: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Readiness(BaseModel):
    """``GET /readyz``: each dependency's state ("ok" or why not), 200 only when all are ok."""

    ready: bool
    vllm: str
    kafka: str
    model: str
    prediction_log: str = Field(description="the outbox sends to Kafka, or why it cannot")


class PromoteRequest(BaseModel):
    """``POST /v1/admin/promote``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: str = Field(
        pattern=r"^[1-9][0-9]{0,9}$",
        description="registry version to make champion (the old champion becomes 'previous')",
        examples=["2"],
    )
    reason: Reason = "ops decision"


class RollbackRequest(BaseModel):
    """``POST /v1/admin/rollback``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Reason = "ops decision"


class CanaryStopRequest(BaseModel):
    """``POST /v1/admin/canary/stop``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Reason = "ops decision"


class RetrainRequest(BaseModel):
    """``POST /v1/admin/retrain``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Reason
    trigger_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        description="idempotency key: the same id trains once (default: a new manual-<uuid>)",
    )


class TriggerAccepted(BaseModel):
    """A retrain trigger Kafka acknowledged (acks=all): the retrainer will pick it up."""

    trigger_id: str
    topic: str
    partition: int
    offset: int
    status: Literal["accepted"] = "accepted"


class ErrorDetail(BaseModel):
    """What went wrong, in the OpenAI error shape."""

    message: str = Field(description="what is wrong, naming the field or value, and the fix")
    type: str = Field(description="authentication_error, permission_error, not_found_error, ...")
    code: int = Field(description="the HTTP status")


class ErrorResponse(BaseModel):
    """Every error the gateway answers: ``{"error": {"message", "type", "code"}}``."""

    error: ErrorDetail


# What each status means where a route can answer it (``responses=`` in routes/*.py).
AUTHENTICATED: dict[int, str] = {
    401: "no API key, or an unknown one",
    403: "the API key lacks this route's scope",
    429: "the API key's request rate is over REFINERY_RATE_LIMIT_RPS; retry after Retry-After",
}
WITH_BODY: dict[int, str] = {
    400: "the body is not UTF-8 text",
    413: "the body is over REFINERY_MAX_BODY_BYTES",
    422: "the body does not match the schema; the message names each bad field",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait",
        "schema": {"type": "integer"},
        "required": True,
    }
}


def error_responses(*described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for these statuses, each with the error body (503s with Retry-After)."""
    return {
        status: {"model": ErrorResponse, "description": description}
        | ({"headers": _RETRY_AFTER} if status in (429, 503) else {})
        for statuses in described
        for status, description in statuses.items()
    }
