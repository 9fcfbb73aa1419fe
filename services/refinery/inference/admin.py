"""Ops commands behind the admin scope: promote a version, roll back, stop a canary, ask
for a retrain.

Registry moves go through the retrainer's promotion functions, the path its gate takes, so
an operator and the gate cannot disagree on what a promotion is. The gateway follows the
registry's champion alias on its own, so it switches after a promote like after any other.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import requests
from kafka.errors import KafkaError
from mlflow.exceptions import MlflowException

from refinery.common import promotion
from refinery.common.events import ModelEvent, TriggerEvent
from refinery.common.exceptions import RegistryError
from refinery.common.kafka import RenewingProducer
from refinery.common.settings import Settings
from refinery.common.topics import Stream
from refinery.inference.exceptions import GatewayError, NotFound, Unavailable
from refinery.inference.protocol import (
    CanaryStopRequest,
    PromoteRequest,
    RetrainRequest,
    RollbackRequest,
    TriggerAccepted,
)

log = logging.getLogger(__name__)

# MLflow's codes for a version (or model) the registry does not have.
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
_RETRY_S = 5


class Conflict(GatewayError):
    """409: the registry's state does not allow it (nothing to roll back to, another base)."""

    status_code = 409
    error_type = "conflict_error"


class AdminService:
    """Runs one registry move at a time (promote, rollback) and sends retrain triggers."""

    def __init__(
        self, settings: Settings, producer: RenewingProducer, ack_timeout_s: float
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.ack_timeout_s = ack_timeout_s
        self._moving = asyncio.Lock()  # two moves at once could interleave their alias writes

    async def promote(self, body: PromoteRequest) -> ModelEvent:
        log.info("admin: promote v%s (%s)", body.version, body.reason)
        reasons = [f"promoted by hand: {body.reason}"]
        return await self._move(
            lambda: promotion.promote(self.settings, body.version, reasons=reasons),
            version=body.version,
            resend=f"promoting v{body.version} again announces it",
        )

    async def rollback(self, body: RollbackRequest) -> ModelEvent:
        log.info("admin: rollback (%s)", body.reason)
        return await self._move(
            lambda: promotion.rollback(self.settings),
            version=None,
            resend="do not roll back again (that would undo this one); promoting the new "
            "champion again announces it",
        )

    async def stop_canary(self, body: CanaryStopRequest) -> ModelEvent:
        """Take the running canary off live traffic; its retraining run records it rejected
        (to keep it instead, promote its version)."""
        log.info("admin: stop the canary (%s)", body.reason)
        return await self._move(
            lambda: promotion.stop_running_canary(
                self.settings, [f"stopped by hand: {body.reason}"]
            ),
            version=None,
            resend="the canary is stopped; nothing to send again",
        )

    async def retrain(self, body: RetrainRequest) -> TriggerAccepted:
        trigger_id = body.trigger_id or f"manual-{uuid.uuid4()}"
        event = TriggerEvent(trigger_id=trigger_id, reason=body.reason, requested_by="cli")
        try:
            meta = await self.producer.send_acknowledged(
                Stream.TRIGGERS, event, trigger_id, self.ack_timeout_s
            )
        except KafkaError as exc:
            raise Unavailable(
                f"trigger {trigger_id} not sent: Kafka did not acknowledge it "
                f"({type(exc).__name__}); retry with trigger_id {trigger_id!r} (it trains once)",
                retry_after_s=_RETRY_S,
            ) from exc
        log.info("admin: retrain trigger %s sent (%s)", trigger_id, body.reason)
        return TriggerAccepted(
            trigger_id=trigger_id, topic=meta.topic, partition=meta.partition, offset=meta.offset
        )

    async def _move(
        self, move: Callable[[], ModelEvent], version: str | None, resend: str
    ) -> ModelEvent:
        """Run a registry move in a thread; map what went wrong to a status."""
        registry = f"the MLflow registry at {self.settings.mlflow_uri}"
        async with self._moving:
            try:
                return await asyncio.to_thread(move)
            except RegistryError as exc:
                cause = exc.__cause__
                if not isinstance(cause, MlflowException):
                    raise Conflict(str(exc)) from exc  # the registry answered: it cannot be done
                if cause.error_code in _MISSING:
                    raise NotFound(
                        f"version {version!r} is not registered as "
                        f"{self.settings.registered_model}; the MLflow UI lists its versions"
                    ) from exc
                raise Unavailable(
                    f"{registry} failed: {cause.message}; retry", retry_after_s=_RETRY_S
                ) from exc
            except (MlflowException, requests.RequestException, OSError) as exc:
                raise Unavailable(
                    f"{registry} failed ({type(exc).__name__}: {exc}); retry",
                    retry_after_s=_RETRY_S,
                ) from exc
            except KafkaError as exc:
                raise Unavailable(
                    "the registry moved but Kafka did not take the event "
                    f"({type(exc).__name__}); the gateway follows the registry within "
                    f"{self.settings.route_reconcile_s:g}s anyway; {resend}",
                    retry_after_s=_RETRY_S,
                ) from exc
