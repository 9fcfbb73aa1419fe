"""Join state expiry with a real faust worker on the real broker.

Expiry used to run in a timer, outside stream iteration, where faust cannot tell which
changelog partition a deletion belongs to: the first expired entry crashed the worker.
The worker here runs with a TTL of seconds under its own topic prefix and app id.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner import murmur2

from refinery.common.events import ExampleEvent
from refinery.common.kafka import EventConsumer, EventProducer, ensure_topics
from refinery.common.settings import Settings
from refinery.common.topics import Stream
from refinery.monitor.join import JoinState, stale_keys, sweep_interval
from refinery.stack.monitor import monitor_process
from refinery.stack.process import ManagedProcess
from tests.monitor.test_join import feedback, prediction

TTL_S = 4.0
EXPIRED_LINE = re.compile(r"join: expired (\d+) entries")
CRASHED = "Crashed"


@pytest.fixture(scope="module")
def expiry_worker(
    kafka_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, ManagedProcess]]:
    settings = kafka_stack.model_copy(
        update={
            "var_dir": tmp_path_factory.mktemp("expiry-var"),
            "topic_prefix": "expirytest",
            "monitor_app_id": "expirytest-monitor",
            "join_ttl_s": TTL_S,
        }
    )
    ensure_topics(settings)
    worker = monitor_process(settings, "expiry-monitor")
    worker.start()
    yield settings, worker
    worker.stop()


def partition_of(key: str, partitions: int) -> int:
    """Where the producer's default partitioner (murmur2) puts ``key``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def assert_alive(worker: ManagedProcess) -> None:
    log_text = worker.log_file.read_text(errors="replace")
    assert worker.pid() is not None and CRASHED not in log_text, worker.log_tail(40)


def wait_expired(worker: ManagedProcess, timeout_s: float) -> int:
    """Entries the worker logged as expired, once it logs any; fails as soon as it dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert_alive(worker)
        found = EXPIRED_LINE.findall(worker.log_file.read_text(errors="replace"))
        if found:
            return sum(int(n) for n in found)
        assert time.monotonic() < deadline, f"nothing expired in:\n{worker.log_tail(40)}"
        time.sleep(0.5)


def changelog_of(settings: Settings, key: str) -> list[tuple[int, bool]]:
    """(partition, is a tombstone) of each record of ``key`` in the join table's changelog."""
    topic = f"{settings.monitor_app_id}-join-changelog"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    partitions = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(partitions)  # the block keepers write on: read up to now
    records: list[tuple[int, bool]] = []
    deadline = time.monotonic() + 30
    while any(consumer.position(tp) < end for tp, end in ends.items()):
        assert time.monotonic() < deadline, "the changelog was not read to its end"
        for batch in consumer.poll(timeout_ms=500).values():
            key_bytes = f'"{key}"'.encode()
            records += [(r.partition, r.value is None) for r in batch if r.key == key_bytes]
    consumer.close()
    return records  # a key's records are in one partition, in order


def examples_until(settings: Settings, pid: str, timeout_s: float = 60) -> list[ExampleEvent]:
    """Every example on the topic, read until ``pid``'s has come and the topic is idle."""
    examples: list[ExampleEvent] = []
    with EventConsumer(settings, [Stream.EXAMPLES], group_id=f"test-{uuid.uuid4()}") as consumer:
        deadline = time.monotonic() + timeout_s
        idle = 0
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            idle = 0 if batch else idle + 1
            examples += [i.event for i in batch if isinstance(i.event, ExampleEvent)]
            if idle >= 2 and any(e.prediction_id == pid for e in examples):
                break
    return examples


def test_expired_state_is_dropped_and_the_worker_goes_on_joining(
    expiry_worker: tuple[Settings, ManagedProcess],
) -> None:
    settings, worker = expiry_worker
    run = uuid.uuid4().hex[:8]
    stale = f"{run}-stale"
    # The fresh pair shares the stale one's partition, so the stale feedback is processed
    # before it (one partition, one order) and the examples read below include its outcome.
    fresh = next(
        pid
        for pid in (f"{run}-fresh-{i}" for i in range(1000))
        if partition_of(pid, settings.topic_partitions)
        == partition_of(stale, settings.topic_partitions)
    )
    with EventProducer(settings) as producer:
        producer.send_and_wait(Stream.PREDICTIONS, prediction(stale), key=stale)
    sent = time.monotonic()

    # The old timer fired every 60 s; the fixed sweep runs every TTL/2. The margin covers a
    # busy machine, and a crash fails the wait at once.
    assert wait_expired(worker, timeout_s=75) >= 1
    print(f"expired after {time.monotonic() - sent:.1f} s (ttl {TTL_S} s)")
    assert time.monotonic() - sent > TTL_S
    # Its tombstone went where its state was: the partition of its prediction.
    home = partition_of(stale, settings.topic_partitions)
    assert changelog_of(settings, stale) == [(home, False), (home, True)]

    with EventProducer(settings) as producer:
        producer.send_and_wait(Stream.FEEDBACK, feedback(stale, "u", "up"), key=stale)
        producer.send_and_wait(Stream.PREDICTIONS, prediction(fresh), key=fresh)
        producer.send_and_wait(Stream.FEEDBACK, feedback(fresh, "u", "down"), key=fresh)
    examples = examples_until(settings, fresh)
    assert {e.prediction_id for e in examples} == {fresh}  # none for the expired prediction
    assert {(e.rating, e.correction) for e in examples} == {("down", " shipping")}
    # Sweeps went on meanwhile (every TTL/2) and the worker is still there.
    time.sleep(sweep_interval(TTL_S) * 2)
    assert_alive(worker)


def test_a_sweep_takes_the_expired_states_of_its_partition_and_reads_old_states() -> None:
    now = 1000.0
    expired_here = JoinState(prediction=prediction("a"), touched_at=now - 10, partition=1)
    young = JoinState(prediction=prediction("c"), touched_at=now - 1, partition=1)
    elsewhere = JoinState(prediction=prediction("d"), touched_at=now - 10, partition=2)
    # Written before states had a partition: the changelog partition it was recovered from.
    legacy = JoinState(prediction=prediction("b"), touched_at=now - 10).to_json()
    del legacy["partition"]
    entries = [
        ("a", expired_here.to_json()),
        ("b", legacy),
        ("c", young.to_json()),
        ("d", elsewhere.to_json()),
    ]
    recovered = {"b": 1}.get
    assert stale_keys(entries, 1, now, 5.0, recovered) == ["a", "b"]
    assert stale_keys(entries, 2, now, 5.0, recovered) == ["d"]
    assert stale_keys(entries, 0, now, 5.0, recovered) == []
    old = JoinState.from_json(legacy)
    assert old.partition is None and old.prediction is not None
    assert (old.prediction.prediction_id, old.touched_at) == ("b", now - 10)
    assert sweep_interval(24 * 3600) == 60.0 and sweep_interval(TTL_S) == TTL_S / 2
