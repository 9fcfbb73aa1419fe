"""Thumbs-up/down: verified against the signed id, acknowledged only once Kafka has it."""

from __future__ import annotations

import asyncio
import hashlib

from kafka.errors import KafkaError

from services.common.events import FeedbackEvent
from services.common.kafka import RenewingProducer
from services.common.topics import Stream
from services.inference.exceptions import NotFound, Unavailable
from services.inference.ids import PredictionIds
from services.inference.metrics import GatewayMetrics
from services.inference.protocol import FeedbackAccepted, FeedbackCreate


def feedback_id(prediction_id: str, user: str | None) -> str:
    """Same prediction and user, same id: a second rating replaces the first downstream."""
    return hashlib.sha256(f"{prediction_id}\x00{user or ''}".encode()).hexdigest()[:32]


class FeedbackService:
    def __init__(
        self,
        producer: RenewingProducer,
        ids: PredictionIds,
        metrics: GatewayMetrics,
        ack_timeout_s: float,
    ) -> None:
        self.producer = producer
        self.ids = ids
        self.metrics = metrics
        self.ack_timeout_s = ack_timeout_s

    async def submit(self, body: FeedbackCreate) -> FeedbackAccepted:
        if not self.ids.is_valid(body.prediction_id):
            raise NotFound(
                f"prediction_id {body.prediction_id!r} was not issued by this service; "
                "use the 'id' of a completion response"
            )
        event = FeedbackEvent(
            feedback_id=feedback_id(body.prediction_id, body.user),
            prediction_id=body.prediction_id,
            rating=body.rating,
            comment=body.comment,
            correction=body.correction,
            user=body.user,
        )
        try:
            await asyncio.to_thread(
                self.producer.send_and_wait,
                Stream.FEEDBACK,
                event,
                event.prediction_id,
                self.ack_timeout_s,
            )
        except KafkaError as exc:
            raise Unavailable(
                f"feedback not stored: Kafka did not acknowledge it ({type(exc).__name__}); "
                "retry later",
                retry_after_s=5,
            ) from exc
        self.metrics.feedback.labels(body.rating).inc()
        return FeedbackAccepted(feedback_id=event.feedback_id, prediction_id=body.prediction_id)
