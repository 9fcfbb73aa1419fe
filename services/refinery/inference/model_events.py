"""Follows ``refinery.models``: a promotion or rollback makes the router look at the
registry's champion alias at once (the event says when to look; the alias says what)."""

from __future__ import annotations

import asyncio
import logging
import threading

from kafka.errors import KafkaError

from refinery.common.events import ModelEvent
from refinery.common.kafka import EventConsumer, Received
from refinery.common.settings import Settings
from refinery.common.topics import Stream
from refinery.inference.router import ModelRouter

log = logging.getLogger(__name__)


class ModelEventListener:
    """A thread following model events from every partition of the topic, without a
    consumer group: it reads only what is published after it started (the registry's
    champion, read once ``ready`` is set, covers everything before), so it has no offsets to
    keep, and no membership to join, lose or wait out after a restart. With a group of its
    own, a gateway once hung at start-up after a rebalance in kafka-python (no heartbeat,
    no rejoin), and a SIGKILLed one waited for its dead member to expire."""

    def __init__(
        self,
        settings: Settings,
        router: ModelRouter,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self.router = router
        self.loop = loop
        self._stop = threading.Event()
        #: set once every partition's position is fixed: no later model event can slip past
        self.ready = threading.Event()
        self._consumer = EventConsumer(settings, [Stream.MODELS], group_id=None)
        self._thread = threading.Thread(target=self._run, name="model-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.ready.is_set():
                    self._consumer.assign_all(timeout_ms=10_000)
                    self.ready.set()
                self._consumer.run(self._handle, self._stop.is_set)
            except KafkaError as exc:  # broker away: keep trying, the consumer reconnects
                log.warning("model events: %s; retrying", exc)
                self._stop.wait(1.0)

    def _handle(self, item: Received) -> None:
        event = item.event
        assert isinstance(event, ModelEvent)
        if event.model != self.settings.registered_model or not event.changes_routes:
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self.router.reconcile(), self.loop)
            route = future.result(timeout=300)
        except Exception:  # a bad event must not stop the gateway following later ones
            log.exception(
                "model events: cannot apply %s v%s; still serving %s",
                event.action,
                event.version,
                self.router.current,
            )
            return
        served = route.served_name if route else "nothing"
        log.info("model events: %s v%s; serving %s", event.action, event.version, served)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()
