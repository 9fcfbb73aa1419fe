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
    """A thread consuming model events; each gateway instance has its own consumer group."""

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
        #: set once partitions are assigned: from then on no model event can slip past
        self.ready = threading.Event()
        # "latest": the registry's champion, read after `ready`, covers everything before.
        self._consumer = EventConsumer(
            settings,
            [Stream.MODELS],
            group_id=f"gateway-{settings.gateway_host}-{settings.gateway_port}",
            auto_offset_reset="latest",
            # A restarted gateway joins the group its killed predecessor still holds, and
            # starts only once the coordinator drops that member: after the session timeout
            # (kafka-python's default 45 s kept a SIGKILLed gateway down 49 s in
            # bench/faults.py). 6 s is the broker's smallest allowed.
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
        )
        self._thread = threading.Thread(target=self._run, name="model-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while not self.ready.is_set() and not self._stop.is_set():
                    for item in self._consumer.poll(timeout_ms=200):
                        self._handle(item)
                    if self._consumer.assignment():
                        # Bounded: a gateway started beside a restarting broker once waited
                        # here past its 60 s start-up, its group membership lapsed meanwhile;
                        # a timeout polls again, which rejoins.
                        self._consumer.resolve_positions(timeout_ms=10_000)
                        self._consumer.commit(timeout_ms=10_000)
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
