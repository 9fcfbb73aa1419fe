"""Kafka I/O with Refinery's guarantees: validated events, acks=all, dead letters with causes."""

from refinery.common.kafka.admin import ensure_topics, wait_for_any_broker, wait_for_broker
from refinery.common.kafka.consumer import DeadLetter, EventConsumer, Received, newest_events
from refinery.common.kafka.producer import EventProducer, RenewingProducer

__all__ = [
    "DeadLetter",
    "EventConsumer",
    "EventProducer",
    "Received",
    "RenewingProducer",
    "ensure_topics",
    "newest_events",
    "wait_for_any_broker",
    "wait_for_broker",
]
