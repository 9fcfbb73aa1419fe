"""The faust app: ``faust -A services.monitor.app worker`` (``refinery up`` starts it).

One agent reads predictions and feedback (co-partitioned by prediction id, so both
halves of a pair reach the same worker), keeps the join state in a changelog-backed
table, and writes labeled examples. Invalid records go to ``<topic>.dlq``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from pydantic import ValidationError

from services.common.events import FeedbackEvent, PredictionEvent
from services.common.kafka.consumer import dead_letter_headers, parse_event
from services.common.settings import get_settings
from services.common.topics import DLQ_SUFFIX, Stream, Topics
from services.monitor.join import JoinState, expired, on_feedback, on_prediction

log = logging.getLogger(__name__)

settings = get_settings()
topics = Topics.from_settings(settings)

app = faust.App(
    settings.monitor_app_id,
    broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.replication,
    store="memory://",  # state lives in the changelog topic and is replayed on start
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
)

traffic = app.topic(
    topics.name(Stream.PREDICTIONS),
    topics.name(Stream.FEEDBACK),
    key_serializer="raw",
    value_serializer="raw",
)
examples = app.topic(topics.name(Stream.EXAMPLES), key_serializer="raw", value_serializer="raw")
join_table = app.Table("join", default=None, partitions=settings.topic_partitions)


async def dead_letter(message: Any, exc: Exception) -> None:
    headers = dead_letter_headers(message.topic, message.partition, message.offset, exc)
    dlq = app.topic(message.topic + DLQ_SUFFIX, key_serializer="raw", value_serializer="raw")
    await dlq.send(key=message.key, value=message.value or b"", headers=headers)
    log.warning(
        "dead-lettered %s[%d]@%d: %s",
        message.topic,
        message.partition,
        message.offset,
        str(exc).splitlines()[0],
    )


@app.agent(traffic)
async def join(stream: faust.StreamT) -> None:
    async for event in stream.events():
        message = event.message
        stream_kind = topics.stream_of(message.topic)
        try:
            parsed = parse_event(stream_kind, message.value)
        except (ValidationError, ValueError) as exc:
            await dead_letter(message, exc)
            continue
        key = message.key.decode() if message.key else ""
        expected = getattr(parsed, "prediction_id", None)
        if key != expected:
            await dead_letter(
                message, ValueError(f"key {key!r} is not its prediction_id {expected!r}")
            )
            continue
        state = JoinState.from_json(join_table.get(key))
        now = time.time()
        if isinstance(parsed, PredictionEvent):
            out = on_prediction(state, parsed, now)
        else:
            assert isinstance(parsed, FeedbackEvent)
            out = on_feedback(state, parsed, now)
        join_table[key] = state.to_json()
        for example in out:
            await examples.send(key=example.feedback_id.encode(), value=example.to_bytes())


@app.timer(interval=60.0)
async def expire_join_state() -> None:
    """Drop pairs that waited longer than ``join_ttl_s`` (feedback that never came, say)."""
    now = time.time()
    stale = [
        k
        for k, v in join_table.items()
        if v and expired(JoinState.from_json(v), now, settings.join_ttl_s)
    ]
    for key in stale:
        join_table.pop(key, None)
    if stale:
        log.info("join: expired %d entries", len(stale))
