"""The monitor's ``faust.App``: its own topics exist, in Kafka's metadata, before it joins.

faust declares a worker's own topics (each table's changelog, the internal topics the app
defines, its leader topic) as its services start, moments before the consumer's first
rebalance. On a busy cluster the group leader's metadata does not have them yet: faust then
assigns none of their partitions ("Ignoring missing topic"), every event raises
``PartitionsMismatch``, and the worker stalls until its consumer refreshes its metadata
minutes later, while the traffic it should watch goes by. Seen in a closed loop whose
monitor first started beside a bootstrap; reproduced on every first start while the
controller was creating and deleting other topics. ``MonitorApp`` declares them on its first
start, before any of its services, and waits until the metadata shows their partitions: its
consumer then joins as a restarted worker does, with every topic there.

It also runs hooks before its producer flushes (``before_flush``): faust flushes the producer
before every offset commit, so what a hook sends (the join's batched changelog records,
refinery/monitor/changelog.py) is in Kafka before the offsets of the events that made it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types import ProducerT, TopicT

from refinery.common.kafka.admin import wait_for_partitions

log = logging.getLogger(__name__)


class MonitorApp(faust.App):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.own_topics: dict[str, TopicT] = {}  # every internal topic made through topic()
        self._before_flush: list[Callable[[], Awaitable[None]]] = []

    def before_flush(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` each time the producer flushes, before it does."""
        self._before_flush.append(hook)

    def _new_producer(self) -> ProducerT:
        producer = super()._new_producer()
        flush = producer.flush

        async def flush_after_hooks() -> None:
            for hook in self._before_flush:
                await hook()
            await flush()

        producer.flush = flush_after_hooks  # type: ignore[method-assign]
        return producer

    def kafka_producer(self) -> AIOKafkaProducer | None:
        """The aiokafka producer under faust's (None unless it runs): for record batches."""
        producer: AIOKafkaProducer | None = getattr(self.producer, "_producer", None)
        return producer

    def topic(self, *topics: str, **kwargs: Any) -> TopicT:
        made = super().topic(*topics, **kwargs)
        if kwargs.get("internal"):  # ours, changelogs and the leader topic all say so
            self.own_topics[made.get_topic_name()] = made
        return made

    async def on_first_start(self) -> None:
        await super().on_first_start()
        for table in self.tables.values():
            table.changelog_topic  # noqa: B018 (made on first use: now, through topic())
        if not self.conf.topic_disable_leader:
            self._leader_assignor._leader_topic  # type: ignore[attr-defined]  # noqa: B018
        for topic in self.own_topics.values():
            await topic.maybe_declare()
        partitions = {
            name: topic.partitions or self.conf.topic_partitions
            for name, topic in self.own_topics.items()
        }
        bootstrap = ",".join(f"{url.host}:{url.port or 9092}" for url in self.conf.broker)
        started = time.monotonic()
        # faust would have waited for its metadata refresh (5 minutes): no longer than that
        await asyncio.to_thread(wait_for_partitions, bootstrap, partitions, 300.0)
        log.info(
            "monitor: own topics in Kafka's metadata after %.1f s: %s",
            time.monotonic() - started,
            ", ".join(sorted(partitions)),
        )
