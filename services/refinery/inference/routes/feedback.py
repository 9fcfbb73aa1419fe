"""``POST /v1/feedback``: 202 once Kafka acknowledged the rating."""

from __future__ import annotations

from fastapi import APIRouter

from refinery.inference.deps import Caller, Feedback, FeedbackScope
from refinery.inference.protocol import (
    AUTHENTICATED,
    WITH_BODY,
    FeedbackAccepted,
    FeedbackCreate,
    error_responses,
)

router = APIRouter(
    dependencies=[FeedbackScope],
    responses=error_responses(
        AUTHENTICATED,
        WITH_BODY,
        {
            400: "the correction is empty, or not a label of a classification task",
            404: "the prediction_id was not issued by this service to this key's tenant, "
            "or is older than REFINERY_FEEDBACK_MAX_AGE_S",
            503: "Kafka did not acknowledge the rating in time",
        },
    ),
)


@router.post("/v1/feedback", status_code=202)
async def create_feedback(
    body: FeedbackCreate, service: Feedback, caller: Caller
) -> FeedbackAccepted:
    return await service.submit(body, caller)
