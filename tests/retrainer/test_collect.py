"""The training corpus on Kafka: kept by its topic's configuration, and never read short."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from refinery.common.events import ExampleEvent
from refinery.common.kafka import EventProducer, ensure_topics
from refinery.common.settings import Settings
from refinery.common.topics import Stream, Topics
from refinery.retrainer.collect import ExamplesGone, end_offsets, read_examples


def _example(n: int) -> ExampleEvent:
    return ExampleEvent(
        feedback_id=f"f{n}",
        prediction_id=f"p{n}",
        prompt=f"Ticket: {n}\nTeam:",
        completion=" billing",
        model_version="1",
        rating="up",
        predicted_at=datetime(2026, 11, 29, tzinfo=UTC),
        rated_at=datetime(2026, 11, 29, tzinfo=UTC),
    )


def _write(settings: Settings, count: int) -> None:
    with EventProducer(settings) as producer:
        for n in range(count):
            producer.send_and_wait(Stream.EXAMPLES, _example(n), key="same-partition")


def test_topics_have_explicit_retention_and_the_corpus_is_compacted(
    kafka_stack: Settings,
) -> None:
    settings = kafka_stack.model_copy(update={"topic_prefix": f"ret{uuid.uuid4().hex[:6]}"})
    ensure_topics(settings)
    topics = Topics.from_settings(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        names = [topics.name(Stream.EXAMPLES), topics.name(Stream.PREDICTIONS)]
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        deadline = time.monotonic() + 20
        while True:  # a topic's configs reach the broker's metadata shortly after creation
            found = admin.describe_configs(resources)
            if all(found["topic"].values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        admin.close()
    corpus = found["topic"][topics.name(Stream.EXAMPLES)]
    assert corpus["cleanup.policy"]["value"] == "compact"
    assert corpus["retention.ms"]["value"] == "-1"
    week = str(settings.traffic_retention_hours * 3600 * 1000)
    assert found["topic"][topics.name(Stream.PREDICTIONS)]["retention.ms"]["value"] == week


def test_collect_fails_loudly_when_records_were_deleted(kafka_stack: Settings) -> None:
    """An examples topic made with the broker's defaults (as before explicit retention)
    loses its oldest records to retention; a collect must say so, not read the rest."""
    settings = kafka_stack.model_copy(update={"topic_prefix": f"gone{uuid.uuid4().hex[:6]}"})
    topic = Topics.from_settings(settings).name(Stream.EXAMPLES)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
        _write(settings, 6)
        examples, _ = read_examples(settings, end_offsets(settings))
        assert len(examples) == 6
        admin.delete_records({TopicPartition(topic, 0): 2})  # what retention does
    finally:
        admin.close()
    with pytest.raises(ExamplesGone, match="partition 0 starts at offset 2"):
        read_examples(settings, end_offsets(settings), timeout_s=10)
