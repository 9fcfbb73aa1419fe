"""``GET /v1/models``: the served model with its registry version."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from refinery.inference.deps import InferenceScope
from refinery.inference.protocol import AUTHENTICATED, ModelCard, ModelList, error_responses

router = APIRouter(
    dependencies=[InferenceScope],
    responses=error_responses(AUTHENTICATED, {422: "a header does not match the schema"}),
)


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    route = request.app.state.router.current
    if route is None:
        return ModelList(data=[])
    card = ModelCard(
        id=route.model,
        created=int(time.time()),
        served_name=route.served_name,
        version=route.version,
        kind=route.kind,
    )
    return ModelList(data=[card])
