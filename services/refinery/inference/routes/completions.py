"""``POST /v1/completions`` and ``POST /v1/chat/completions`` (OpenAI-compatible)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from refinery.inference.deps import Caller, Completions, InferenceScope
from refinery.inference.protocol import (
    AUTHENTICATED,
    WITH_BODY,
    ChatCompletionRequest,
    CompletionRequest,
    error_responses,
)
from refinery.inference.router import Route

# 200 is vLLM's OpenAI body (JSON), or with "stream": true, server-sent events: the schema
# of an event stream describes one event (OpenAPI 3.1).
_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string", "description": "a JSON chunk, or [DONE] last"}},
    "required": ["data"],
}
_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the answer, or its chunks as server-sent events when streaming",
        "content": {"text/event-stream": {"schema": _EVENT}},
        "headers": {
            "X-Refinery-Arm": {
                "description": "which arm answered: the champion, or a canary while one runs",
                "schema": {"type": "string", "enum": ["champion", "canary"]},
            }
        },
    }
}

ARM_HEADER = "X-Refinery-Arm"

router = APIRouter(
    dependencies=[InferenceScope],
    responses=_ANSWER
    | error_responses(
        AUTHENTICATED,
        WITH_BODY,
        {
            400: "vLLM rejected the request (e.g. prompt plus max_tokens over the context "
            "length), or the body is not UTF-8 text",
            404: "the model is not served here (ask for the registered model's name)",
            502: "vLLM answered with an error the gateway did not expect",
            503: "vLLM is unreachable, no model is routed yet, or the prediction log is full",
        },
    ),
)


def _arm(route: Route) -> dict[str, str]:
    """Which arm answered: ``champion``, or ``canary`` while one runs (the body's ``model``
    names the served version)."""
    return {ARM_HEADER: route.arm}


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, service: Completions, caller: Caller
) -> JSONResponse | StreamingResponse:
    if body.stream:
        chunks, route = await service.open_stream(body, "completions", caller.tenant)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=_arm(route))
    answer, route = await service.complete(body, "completions", caller.tenant)
    return JSONResponse(answer, headers=_arm(route))


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, service: Completions, caller: Caller
) -> JSONResponse | StreamingResponse:
    if body.stream:
        chunks, route = await service.open_stream(body, "chat.completions", caller.tenant)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=_arm(route))
    answer, route = await service.complete(body, "chat.completions", caller.tenant)
    return JSONResponse(answer, headers=_arm(route))
