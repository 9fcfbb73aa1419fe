"""The join table's batched changelog: faust's encoding, the write order, and a flush to
the real broker that keeps every record, in order, and loses none when it fails."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer
from faust.tables.base import Collection
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from refinery.common.settings import Settings
from refinery.monitor.changelog import BatchedChanges


def join_table(app_id: str = "changelog-test") -> Collection:
    app = faust.App(app_id, store="memory://", topic_partitions=2)
    table = app.Table("join", default=None, partitions=2)
    assert isinstance(table, Collection)
    return table


def test_records_are_encoded_as_faust_encodes_the_tables_own_writes() -> None:
    table = join_table()
    changes = BatchedChanges(table)
    state = {"prediction": None, "feedback": {}, "touched_at": 1.5, "rows": [[0, 2.0, None]]}
    changes.set(1, "p1", state)
    changes.pop(1, "p1")
    topic = table.changelog_topic
    key, _ = topic.prepare_key("p1", table.key_serializer)
    value, _ = topic.prepare_value(state, table.value_serializer)
    assert changes._pending == {1: [(key, value), (key, None)]}
    assert changes.topic == "changelog-test-join-changelog"


def test_reads_see_each_change_at_once_and_records_keep_their_order_per_partition() -> None:
    changes = BatchedChanges(join_table())
    changes.set(0, "a", {"n": 1})
    changes.set(1, "b", {"n": 2})
    keeper = changes.of_partition(0)
    keeper["~blocks0:meta"] = {"sealed": 1}
    changes.set(0, "a", {"n": 3})
    assert changes.get("a") == {"n": 3} and changes["b"] == {"n": 2}
    assert keeper.get("~blocks0:meta") == {"sealed": 1} and len(changes) == 3
    del keeper["~blocks0:meta"]
    assert changes.pop(0, "missing") is None  # nothing there: no tombstone
    assert keeper.pop("~blocks0:meta", None) is None
    assert changes.pending == 5
    order = [(key.decode(), value is None) for key, value in changes._pending[0]]
    meta = '"~blocks0:meta"'
    assert order == [('"a"', False), (meta, False), ('"a"', False), (meta, True)]
    assert sorted(k for k, _ in changes.items()) == ["a", "b"]


def _topic(settings: Settings, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()


def _read(settings: Settings, topic: str, partition: int, count: int) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records = []
    for record in consumer:
        records.append((record.key, record.value))
        if len(records) == count:
            break
    consumer.close()
    return records


def test_a_flush_sends_every_record_in_order_in_batches_and_keeps_them_when_it_fails(
    kafka_stack: Settings,
) -> None:
    app_id = f"changelog-{uuid.uuid4().hex[:8]}"
    table = join_table(app_id)
    changes = BatchedChanges(table)
    for n in range(300):  # ~40 KB a partition: several batches of 4 KB
        changes.set(n % 2, f"p{n}", {"n": n, "pad": "x" * 200})
    changes.pop(0, "p0")

    async def flush() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_stack.kafka_bootstrap,
            max_batch_size=4096,
            acks="all",
            request_timeout_ms=2000,
        )
        await producer.start()
        try:
            with pytest.raises(RuntimeError, match="301 join table records not sent"):
                await changes.flush(None)  # faust's producer stopped: the commit must fail
            assert changes.pending == 301
            try:  # the topic is not there yet (no auto-creation): nothing is dropped
                await changes.flush(producer)
            except Exception as exc:
                failed: Exception | None = exc
            else:
                failed = None
            assert failed is not None and changes.pending == 301
            _topic(kafka_stack, changes.topic)
            await changes.flush(producer)
        finally:
            await producer.stop()

    asyncio.run(flush())
    assert changes.pending == 0
    even = _read(kafka_stack, changes.topic, 0, 151)
    assert [key for key, _ in even] == [f'"p{n}"'.encode() for n in range(0, 300, 2)] + [b'"p0"']
    assert even[-1][1] is None and b'"n":2,' in even[1][1]
    odd = _read(kafka_stack, changes.topic, 1, 150)
    assert [key for key, _ in odd] == [f'"p{n}"'.encode() for n in range(1, 300, 2)]
