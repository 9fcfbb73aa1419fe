"""Kafka from Maven Central jars: restart keeps data; a node reachable on every interface.

Three nodes (replication, min ISR, refusal below it) are tried under a gateway in
tests/inference/test_failover.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.producer.future import RecordMetadata

from refinery.common.events import FeedbackEvent
from refinery.common.exceptions import EventValidationError
from refinery.common.kafka import EventProducer, RenewingProducer, ensure_topics, wait_for_broker
from refinery.common.kafka.admin import consumer_lag
from refinery.common.kafka.consumer import parse_event
from refinery.common.settings import Settings
from refinery.common.topics import Stream, Topics
from refinery.retrainer.collect import end_offsets
from refinery.stack.kafka import KafkaCluster
from tests.ports import KAFKA_ADDRESS, KAFKA_RESTART, ports


def _own_cluster(
    base: Settings,
    tmp_path: Path,
    block: int,
    nodes: int,
    host: str = "127.0.0.1",
    bind_host: str | None = None,
) -> tuple[KafkaCluster, Settings]:
    own = ports(block)
    brokers = ",".join(f"{host}:{own['kafka_port'] + i}" for i in range(nodes))
    settings = base.model_copy(
        update={
            "var_dir": tmp_path,
            **own,
            "kafka_nodes": nodes,
            "kafka_bootstrap": brokers,
            "kafka_host": host,
            "kafka_bind_host": bind_host,
        }
    )
    return KafkaCluster(settings, data_dir=tmp_path / "kafka"), settings


def test_restart_reuses_data(stack_settings: Settings, tmp_path: Path) -> None:
    cluster, settings = _own_cluster(stack_settings, tmp_path, KAFKA_RESTART, 1)
    cluster.prepare()
    [proc] = cluster.processes()
    proc.start()
    try:
        wait_for_broker(settings.kafka_bootstrap)
        ensure_topics(settings)
        event = FeedbackEvent(feedback_id="f", prediction_id=str(uuid.uuid4()), rating="up")
        with EventProducer(settings) as producer:
            producer.send_and_wait(Stream.FEEDBACK, event, key=event.prediction_id)
        cluster_id = (cluster.data_dir / "cluster.id").read_text()
        meta = (cluster.nodes[0].data_dir / "logs" / "meta.properties").read_text()

        assert proc.stop()
        assert proc.pid() is None
        assert not proc.last_stop_forced, "broker needed SIGKILL: no clean shutdown"

        cluster.prepare()  # a second start must not reformat
        assert (cluster.data_dir / "cluster.id").read_text() == cluster_id
        assert (cluster.nodes[0].data_dir / "logs" / "meta.properties").read_text() == meta
        proc.start()
        wait_for_broker(settings.kafka_bootstrap)
        consumer = KafkaConsumer(
            Topics.from_settings(settings).name(Stream.FEEDBACK),
            bootstrap_servers=settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        got = [parse_event(Stream.FEEDBACK, r.value) for r in consumer]
        consumer.close()
        assert event in got
    finally:
        proc.stop()


def _routable_address() -> str | None:
    """This host's address on its default route, or None when it has only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: picks a route, sends nothing
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_a_broker_binds_every_interface_and_advertises_a_routable_address(
    stack_settings: Settings, tmp_path: Path
) -> None:
    address = _routable_address()
    if address is None:
        pytest.skip("this host has no interface but loopback")
    own = ports(KAFKA_ADDRESS)
    cluster, settings = _own_cluster(
        stack_settings, tmp_path, KAFKA_ADDRESS, 1, host=address, bind_host="0.0.0.0"
    )
    assert cluster.bootstrap == f"{address}:{own['kafka_port']}"
    cluster.prepare()
    [proc] = cluster.processes()
    proc.start()
    try:
        wait_for_broker(settings.kafka_bootstrap)
        ensure_topics(settings)
        # Clients that find the broker over loopback are told the routable address.
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{own['kafka_port']}")
        try:
            brokers = admin.describe_cluster()["brokers"]
        finally:
            admin.close()
        assert [(b["host"], b["port"]) for b in brokers] == [(address, own["kafka_port"])]
        event = FeedbackEvent(feedback_id="f", prediction_id=str(uuid.uuid4()), rating="up")
        with EventProducer(settings) as producer:
            producer.send_and_wait(Stream.FEEDBACK, event, key=event.prediction_id)
        consumer = KafkaConsumer(
            Topics.from_settings(settings).name(Stream.FEEDBACK),
            bootstrap_servers=settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        try:
            got = [parse_event(Stream.FEEDBACK, r.value) for r in consumer]
        finally:
            consumer.close()
        assert got == [event]
    finally:
        proc.stop()


def test_concurrent_acknowledged_sends_share_a_hand_over_and_a_bad_one_fails_alone(
    kafka_stack: Settings,
) -> None:
    """The gateway's path for ratings: requests' records go to the producer together (one
    worker-thread hop), each is acknowledged on its own, and an invalid event fails only its
    own request."""
    settings = kafka_stack.model_copy(update={"topic_prefix": f"batch-{uuid.uuid4().hex[:8]}"})
    ensure_topics(settings)
    producer = RenewingProducer(lambda: EventProducer(settings))
    batches: list[int] = []
    send_batch = producer._send_batch

    def counted(batch: list[Any], loop: asyncio.AbstractEventLoop) -> None:
        batches.append(len(batch))
        send_batch(batch, loop)

    producer._send_batch = counted  # type: ignore[method-assign]
    good = [
        FeedbackEvent(feedback_id=f"f{i}", prediction_id=str(uuid.uuid4()), rating="up")
        for i in range(20)
    ]
    bad = FeedbackEvent.model_construct(feedback_id="bad", prediction_id="p", rating="meh")

    async def send_all() -> list[Any]:
        sends = [producer.send_acknowledged(Stream.FEEDBACK, e, e.prediction_id) for e in good]
        sends.insert(7, producer.send_acknowledged(Stream.FEEDBACK, bad, "p"))
        return await asyncio.gather(*sends, return_exceptions=True)

    try:
        outcomes = asyncio.run(send_all())
    finally:
        producer.close(timeout_s=10)
    failed = outcomes.pop(7)
    assert isinstance(failed, EventValidationError), failed
    assert all(isinstance(meta, RecordMetadata) for meta in outcomes), outcomes
    assert len({(meta.partition, meta.offset) for meta in outcomes}) == len(good)
    assert batches == [len(good) + 1], f"one hand-over for the 21 concurrent sends: {batches}"


def test_reading_end_offsets_without_a_group_logs_no_warning(
    kafka_stack: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The monitor measures its lag every 30 s and the retrainer reads the examples' ends
    at every run: a kafka-python warning at each ("group_id is None: disabling auto-commit")
    filled the monitor's log with one line per measurement."""
    caplog.set_level(logging.WARNING, logger="kafka")
    assert consumer_lag(kafka_stack.kafka_bootstrap, []) == {}  # no group asked about
    assert end_offsets(kafka_stack)  # the examples topic has partitions
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
