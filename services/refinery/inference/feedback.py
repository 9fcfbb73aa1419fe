"""Thumbs-up/down: verified against the signed id, acknowledged only once Kafka has it.

Only a key of the tenant that got the answer may rate it (an admin key: any tenant's), and
only within ``max_age_s`` of the answer. The event names the key by its fingerprint, so
downstream caps can tell one flooding key from many users.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from kafka.errors import KafkaError

from refinery.common.events import FeedbackEvent
from refinery.common.kafka import RenewingProducer
from refinery.common.task import TaskObjective
from refinery.common.topics import Stream
from refinery.inference.auth import ApiKey, Scope
from refinery.inference.exceptions import BadRequest, NotFound, Unavailable
from refinery.inference.ids import PredictionIds
from refinery.inference.metrics import GatewayMetrics
from refinery.inference.protocol import FeedbackAccepted, FeedbackCreate


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
        task: TaskObjective,
        tenants: Sequence[str],
        max_age_s: float,
    ) -> None:
        self.producer = producer
        self.task = task
        self.tenants = list(tenants)
        self.max_age_s = max_age_s
        self.ids = ids
        self.metrics = metrics
        self.ack_timeout_s = ack_timeout_s

    async def submit(self, body: FeedbackCreate, caller: ApiKey) -> FeedbackAccepted:
        tenants = self.tenants if caller.allows(Scope.ADMIN) else [caller.tenant]
        issued = self.ids.verify(body.prediction_id, tenants)
        if issued is None:
            raise NotFound(
                f"prediction_id {body.prediction_id!r} was not issued by this service to "
                "this key's tenant; use the 'id' of a completion response"
            )
        age_s = time.time() - issued.issued_at
        if age_s > self.max_age_s:
            raise NotFound(
                f"prediction_id {body.prediction_id!r} was issued {age_s / 3600:.0f} h ago; "
                f"answers can be rated for {self.max_age_s / 3600:.0f} h"
            )
        correction = body.correction
        if correction is not None:
            try:  # the same normalisation as the CLI's: a label checked, free text trimmed
                correction = self.task.correction_target(correction)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        event = FeedbackEvent(
            feedback_id=feedback_id(body.prediction_id, body.user),
            prediction_id=body.prediction_id,
            rating=body.rating,
            comment=body.comment,
            correction=correction,
            user=body.user,
            tenant=issued.tenant,
            key_id=caller.key_id,
        )
        try:
            await self.producer.send_acknowledged(
                Stream.FEEDBACK, event, event.prediction_id, self.ack_timeout_s
            )
        except KafkaError as exc:
            raise Unavailable(
                f"feedback not stored: Kafka did not acknowledge it ({type(exc).__name__}); "
                "retry later",
                retry_after_s=5,
            ) from exc
        self.metrics.feedback.labels(body.rating).inc()
        return FeedbackAccepted(feedback_id=event.feedback_id, prediction_id=body.prediction_id)
