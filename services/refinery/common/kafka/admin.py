"""Broker readiness and topic creation with the configured partitions and replication."""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.net.compat import KafkaNetClient

from refinery.common.settings import Settings
from refinery.common.topics import Stream, Topics

log = logging.getLogger(__name__)


def wait_for_broker(bootstrap: str, timeout_s: float = 60.0, min_brokers: int = 1) -> None:
    """Block until ``min_brokers`` brokers answer a metadata request, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            # Probe first without an admin client: in kafka-python 3.0.12 a KafkaAdminClient
            # whose bootstrap fails leaves its IO thread running, one per attempt on a down
            # cluster (see _answers_metadata).
            wait_for_any_broker(bootstrap, max(0.5, min(3.0, deadline - time.monotonic())))
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=3000
            )
            try:
                brokers = admin.describe_cluster()["brokers"]
                if len(brokers) >= min_brokers:
                    return
                last = RuntimeError(f"{len(brokers)} of {min_brokers} brokers up")
            finally:
                admin.close()
        except (KafkaError, OSError, ValueError, TimeoutError) as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"Kafka at {bootstrap} not ready after {timeout_s:.0f}s: {last}")


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Every Refinery topic with its configuration: retention is explicit, never the
    broker's default, and the examples topic (the training corpus) is never trimmed."""
    topics = Topics.from_settings(settings)
    base = {"min.insync.replicas": str(min(2, settings.replication))}
    hours = 3600 * 1000
    traffic = {**base, "retention.ms": str(settings.traffic_retention_hours * hours)}
    ops = {**base, "retention.ms": str(settings.ops_retention_hours * hours)}
    # Keyed by feedback id: compaction keeps each rating's newest example, and nothing is
    # deleted by age, so a retraining months later still reads every label.
    corpus = {**base, "cleanup.policy": "compact", "retention.ms": "-1"}
    configs = {}
    for stream in Stream:
        if stream is Stream.EXAMPLES:
            configs[topics.name(stream)] = corpus
        elif stream in (Stream.PREDICTIONS, Stream.FEEDBACK):
            configs[topics.name(stream)] = traffic
        else:
            configs[topics.name(stream)] = ops
        configs[topics.dlq(stream)] = ops
    return configs


def wait_for_any_broker(bootstrap: str, timeout_s: float) -> None:
    """Return once any broker of ``bootstrap`` answers a metadata request; else TimeoutError.

    Every address is asked on its own, all at once: one client over the whole list bootstraps
    from an address picked at random and can spend the whole budget on a dead one (a host that
    drops packets, a hung broker) while the live ones would have answered.
    """
    addresses = [a.strip() for a in bootstrap.split(",") if a.strip()]
    timeout_ms = int(timeout_s * 1000)
    pool = ThreadPoolExecutor(max_workers=len(addresses), thread_name_prefix="kafka-ready")
    try:
        probes = [pool.submit(_answers_metadata, address, timeout_ms) for address in addresses]
        for probe in as_completed(probes, timeout=timeout_s + 1):
            if probe.result():
                return
    except TimeoutError:
        pass
    finally:
        pool.shutdown(wait=False)  # a probe of a dead address ends at its own deadline
    raise TimeoutError(f"no Kafka broker of {bootstrap} answered within {timeout_s:.1f}s")


def _answers_metadata(address: str, timeout_ms: int) -> bool:
    # The bare network client bootstraps (ApiVersions, then Metadata) on the calling thread.
    # KafkaAdminClient would start an IO thread first and, in kafka-python 3.0.12, leave it
    # running when the bootstrap fails: one leaked thread per probe of a down cluster.
    client = KafkaNetClient(bootstrap_servers=address, request_timeout_ms=timeout_ms)
    try:
        client.check_version(timeout_ms=timeout_ms)
        return True
    except (KafkaError, OSError):
        return False
    finally:
        client.close()


def ensure_topics(settings: Settings) -> list[str]:
    """Create every Refinery topic (and its ``.dlq``) that is missing; return those created."""
    configs = topic_configs(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30000)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in configs if n not in existing]
        new = [
            NewTopic(n, settings.topic_partitions, settings.replication, topic_configs=configs[n])
            for n in missing
        ]
        if new:
            # A concurrent creator may win the race; the topic is there either way.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=30000)
        log.info("topics: %d created, %d already there", len(missing), len(existing))
        return missing
    finally:
        admin.close()


def wait_for_partitions(
    bootstrap: str, partitions: dict[str, int], timeout_s: float = 60.0
) -> None:
    """Block until Kafka's metadata shows each topic with its number of partitions, each led
    by a broker; else TimeoutError. A topic just created is missing from a broker's answer for
    a moment (longer on a busy cluster), and a consumer group that balances its partitions
    then assigns none of that topic's."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            described = admin.describe_topics(list(partitions))
            led = {
                topic["name"]: sum(p["leader_id"] >= 0 for p in topic["partitions"] or ())
                for topic in described
            }
            waiting = {
                name: f"{led.get(name, 0)} of {n}"
                for name, n in partitions.items()
                if led.get(name) != n
            }
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"topics whose partitions led are not the ones expected after "
                    f"{timeout_s:.0f}s: {waiting}"
                )
            time.sleep(0.2)
    finally:
        admin.close()


def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offset (the next it reads) per (topic, partition)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        offsets = admin.list_group_offsets([group]).get(group) or {}
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}
    finally:
        admin.close()


def _end_offsets(consumer: KafkaConsumer, partitions: list[TopicPartition]) -> dict[Any, int]:
    """kafka-python's ``end_offsets`` raises KeyError when a partition's answer is missing
    (its leader moving, seen in bench/faults.py): asked again, it answers."""
    for _ in range(4):
        with contextlib.suppress(KeyError):
            return consumer.end_offsets(partitions)  # type: ignore[no-any-return]
        time.sleep(1.0)
    return consumer.end_offsets(partitions)  # type: ignore[no-any-return]


def consumer_lag(bootstrap: str, groups: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Per consumer group (every one, or ``groups``) and topic: records not yet committed
    (end offset - committed)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    # No group: it only reads end offsets (without this, kafka-python warns at every call:
    # "group_id is None: disabling auto-commit", every 30 s in the monitor's log).
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        if groups is None:
            groups = [g["group_id"] for g in admin.list_groups()]
        committed = admin.list_group_offsets(groups) if groups else {}
        lags: dict[str, dict[str, int]] = {}
        for group_id, offsets in committed.items():
            if not offsets:
                continue
            ends = _end_offsets(consumer, list(offsets))
            per_topic: dict[str, int] = {}
            for tp, meta in offsets.items():
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, ends[tp] - meta.offset)
            lags[group_id] = per_topic
        return lags
    finally:
        consumer.close()
        admin.close()
