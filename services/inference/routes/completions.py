"""``POST /v1/completions`` and ``POST /v1/chat/completions`` (OpenAI-compatible)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from services.inference.deps import Completions, InferenceScope
from services.inference.protocol import ChatCompletionRequest, CompletionRequest

router = APIRouter(dependencies=[InferenceScope])


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, service: Completions
) -> JSONResponse | StreamingResponse:
    if body.stream:
        return StreamingResponse(
            await service.open_stream(body, "completions"), media_type="text/event-stream"
        )
    return JSONResponse(await service.complete(body, "completions"))


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, service: Completions
) -> JSONResponse | StreamingResponse:
    if body.stream:
        return StreamingResponse(
            await service.open_stream(body, "chat.completions"), media_type="text/event-stream"
        )
    return JSONResponse(await service.complete(body, "chat.completions"))
