"""Follows ``refinery.models``: a promotion or rollback switches the served model."""

from __future__ import annotations

import asyncio
import logging
import threading

from services.common.events import ModelEvent
from services.common.kafka import EventConsumer, Received
from services.common.registry import ModelRegistry
from services.common.settings import Settings
from services.common.topics import Stream
from services.inference.router import ModelRouter

log = logging.getLogger(__name__)

SWITCHING_ACTIONS = ("promoted", "rolled_back")


class ModelEventListener:
    """A thread consuming model events; each gateway instance has its own consumer group."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        router: ModelRouter,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.router = router
        self.loop = loop
        self._stop = threading.Event()
        self._consumer = EventConsumer(
            settings,
            [Stream.MODELS],
            group_id=f"gateway-{settings.gateway_host}-{settings.gateway_port}",
        )
        self._thread = threading.Thread(target=self._run, name="model-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._consumer.run(self._handle, self._stop.is_set)
        except Exception:
            log.exception("model events: listener stopped")

    def _handle(self, item: Received) -> None:
        event = item.event
        assert isinstance(event, ModelEvent)
        if event.model != self.settings.registered_model or event.action not in SWITCHING_ACTIONS:
            return
        info = self.registry.get(event.version)  # the registry, not the event, is the truth
        future = asyncio.run_coroutine_threadsafe(self.router.switch_to(info), self.loop)
        route = future.result(timeout=300)
        log.info(
            "model events: %s v%s → serving %s", event.action, event.version, route.served_name
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()
