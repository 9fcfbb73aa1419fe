"""``POST /v1/feedback``: 202 once Kafka acknowledged the rating."""

from __future__ import annotations

from fastapi import APIRouter

from services.inference.deps import Feedback, FeedbackScope
from services.inference.protocol import FeedbackAccepted, FeedbackCreate

router = APIRouter(dependencies=[FeedbackScope])


@router.post("/v1/feedback", status_code=202)
async def create_feedback(body: FeedbackCreate, service: Feedback) -> FeedbackAccepted:
    return await service.submit(body)
