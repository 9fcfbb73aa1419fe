"""A monitor worker's first start: its own topics are in Kafka's metadata before it joins.

faust made them as its services started, and a busy cluster's metadata did not have them at
the consumer's first rebalance ("Ignoring missing topic", then PartitionsMismatch on every
event for minutes; refinery/monitor/faust_app.py). The app is built here as app.py builds
it, on the session's broker, and only its first-start step is run: once that step is done,
before any of faust's services (consumer, tables, leader assignor) has started, every topic
the worker owns must be there with all its partitions.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from refinery.common.kafka.admin import wait_for_partitions
from refinery.common.settings import Settings
from refinery.monitor.faust_app import MonitorApp


def _partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
    finally:
        admin.close()


def test_the_first_start_has_every_own_topic_in_the_metadata_before_joining(
    kafka_stack: Settings, tmp_path: Path
) -> None:
    app_id = f"first-start-{uuid.uuid4().hex[:8]}"
    expected = {
        f"{app_id}-join-changelog": 3,
        f"{app_id}-window-changelog": 1,
        f"{app_id}-join-sweep": 3,
        f"{app_id}-window": 1,
        f"{app_id}-__assignor-__leader": 1,
    }
    assert _partitions(kafka_stack.kafka_bootstrap, list(expected)) == dict.fromkeys(expected, 0)

    async def first_start() -> None:
        """Built inside the loop that runs it, as the worker builds it inside its own."""
        app = MonitorApp(
            app_id,
            broker=f"kafka://{kafka_stack.kafka_bootstrap}",
            datadir=str(tmp_path),
            topic_partitions=3,
            store="memory://",
            web_enabled=False,
        )
        app.Table("join", default=None, partitions=3)
        app.Table("window", default=None, partitions=1)
        app.topic(f"{app_id}-join-sweep", partitions=3, internal=True)
        app.topic(f"{app_id}-window", partitions=1, internal=True)
        try:
            await app.on_first_start()
        finally:
            await app.producer.stop()

    asyncio.run(first_start())

    assert _partitions(kafka_stack.kafka_bootstrap, list(expected)) == expected


def test_waiting_for_a_topic_that_never_comes_ends_in_a_timeout_that_names_it(
    kafka_stack: Settings,
) -> None:
    with pytest.raises(TimeoutError, match="never-made"):
        wait_for_partitions(kafka_stack.kafka_bootstrap, {f"never-made-{uuid.uuid4()}": 1}, 1.0)
