"""HTTP bodies: the OpenAI request fields Refinery reads, plus feedback and model listings.

Requests allow extra OpenAI fields (``logprobs``, ``seed``, ...) and pass them to vLLM
untouched; the fields below are the ones the gateway checks or logs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.events import ChatTurn, SamplingParams


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = Field(
        default=1, description="one choice per request: each answer is one logged prediction"
    )
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(default=None, max_length=256)
    # Refinery's own: which slice of traffic this is (product, tenant, ...), for drift by segment.
    segment: str | None = Field(default=None, max_length=128)

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
        if self.stream:
            body["stream_options"] = {**(self.stream_options or {}), "include_usage": True}
        return body

    @property
    def client_wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(_OpenAIRequest):
    """``POST /v1/completions``."""

    prompt: str = Field(min_length=1, description="one prompt per request")


class TextPart(BaseModel):
    """A text part of a message's content (the only kind a text model takes)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined, as vLLM joins them)."""
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_OpenAIRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)

    def turns(self) -> list[ChatTurn]:
        """The conversation as logged: structured messages with text content."""
        return [ChatTurn(role=m.role, content=m.text()) for m in self.messages]


class FeedbackCreate(BaseModel):
    """``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid")

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
