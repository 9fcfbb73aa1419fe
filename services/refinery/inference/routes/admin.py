"""``POST /v1/admin/{promote,rollback,canary/stop,retrain}``: the ops commands, admin
scope only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from refinery.common.events import ModelEvent
from refinery.inference.admin import AdminService
from refinery.inference.auth import Scope
from refinery.inference.deps import require
from refinery.inference.protocol import (
    AUTHENTICATED,
    WITH_BODY,
    CanaryStopRequest,
    PromoteRequest,
    RetrainRequest,
    RollbackRequest,
    TriggerAccepted,
    error_responses,
)


async def _admin(request: Request) -> AdminService:
    return request.app.state.admin  # type: ignore[no-any-return]


Admin = Annotated[AdminService, Depends(_admin)]
MLFLOW_OR_KAFKA_DOWN = "the registry or Kafka cannot be reached; retry after Retry-After"

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require(Scope.ADMIN))],
    responses=error_responses(AUTHENTICATED, WITH_BODY, {503: MLFLOW_OR_KAFKA_DOWN}),
)


@router.post(
    "/promote",
    responses=error_responses(
        {
            404: "the version is not registered",
            409: "the version applies to another base model than the champion's",
        }
    ),
)
async def promote(body: PromoteRequest, service: Admin) -> ModelEvent:
    """Make a registered version the champion; the answer is the `promoted` event sent."""
    return await service.promote(body)


@router.post(
    "/rollback",
    responses=error_responses({409: "there is no 'previous' version to roll back to"}),
)
async def rollback(body: RollbackRequest, service: Admin) -> ModelEvent:
    """Make the 'previous' version champion again; the answer is the `rolled_back` event."""
    return await service.rollback(body)


@router.post("/canary/stop", responses=error_responses({409: "no canary is running"}))
async def stop_canary(body: CanaryStopRequest, service: Admin) -> ModelEvent:
    """Take the canary off live traffic (rejected); the answer is the `canary_stopped`
    event. To keep it instead, promote its version."""
    return await service.stop_canary(body)


@router.post("/retrain", status_code=202)
async def retrain(body: RetrainRequest, service: Admin) -> TriggerAccepted:
    """Ask the retrainer for a new fine-tune; 202 once Kafka has the trigger (acks=all)."""
    return await service.retrain(body)
