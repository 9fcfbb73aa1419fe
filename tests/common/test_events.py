"""Event schemas: the JSON Schema files agree with the models, and every event survives the
real broker; invalid records land in the DLQ with their cause while the consumer goes on."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import jsonschema
import pytest
from kafka import KafkaConsumer, KafkaProducer

from refinery.common.events import (
    SCHEMA_TYPES,
    AlertEvent,
    ChatTurn,
    DecisionEvent,
    DriftMetric,
    Event,
    ExampleEvent,
    FeedbackEvent,
    ModelEvent,
    PredictionEvent,
    SamplingParams,
    TriggerEvent,
    parse_versioned,
    schema_file_name,
    schema_of,
)
from refinery.common.exceptions import EventValidationError
from refinery.common.kafka import (
    DeadLetter,
    EventConsumer,
    EventProducer,
    Received,
    ensure_topics,
)
from refinery.common.settings import REPO_ROOT, Settings
from refinery.common.topics import STREAM_EVENTS, Stream, Topics

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def sample_events() -> dict[Stream, Event]:
    pid = str(uuid.uuid4())
    return {
        Stream.PREDICTIONS: PredictionEvent(
            prediction_id=pid,
            endpoint="completions",
            prompt="Ticket: where is it\nTeam:",
            completion=" shipping",
            model="refinery-model",
            model_version="1",
            served_name="refinery-model-v1",
            params=SamplingParams(temperature=0, max_tokens=4),
            prompt_tokens=9,
            completion_tokens=1,
            latency_ms=12.5,
            segment="retail",
            user="u1",
        ),
        Stream.FEEDBACK: FeedbackEvent(
            feedback_id="f-1",
            prediction_id=pid,
            rating="down",
            correction=" billing",
            user="u1",
            comment="wrong team",
        ),
        Stream.EXAMPLES: ExampleEvent(
            feedback_id="f-1",
            prediction_id=pid,
            prompt="p",
            messages=[
                ChatTurn(role="system", content="be brief"),
                ChatTurn(role="user", content="p"),
            ],
            completion=" shipping",
            model_version="1",
            rating="down",
            correction=" billing",
            predicted_at=NOW,
            rated_at=NOW,
        ),
        Stream.ALERTS: AlertEvent(
            window_start=NOW,
            window_end=NOW,
            window_size=200,
            drifted_columns=["prompt_length"],
            metrics=[
                DriftMetric(
                    column="prompt_length", method="ks", score=0.001, threshold=0.05, drifted=True
                )
            ],
            reference_version="1",
            report_url="file:///tmp/r.html",
            episode_start=NOW,
            notice="opened",
        ),
        Stream.TRIGGERS: TriggerEvent(
            trigger_id="t-1", reason="drift", requested_by="monitor", evidence={"alerts": 3}
        ),
        Stream.MODELS: ModelEvent(
            model="refinery-model",
            version="2",
            action="promoted",
            served_name="refinery-model-v2",
            artifact_uri="file:///a",
            kind="lora",
            base_version="1",
            previous_version="1",
            metrics={"accuracy": 0.9},
        ),
        Stream.DECISIONS: DecisionEvent(
            action="rejected",
            subject="refinery-model",
            summary="v2 rejected; champion v1 keeps serving",
            severity="warning",
            version="2",
            run_url="http://127.0.0.1:5000/#/experiments/1/runs/abc",
            reasons=["golden accuracy fell"],
        ),
    }


@pytest.mark.parametrize("event_type", SCHEMA_TYPES, ids=schema_file_name)
def test_schema_file_matches_model(event_type: type[Event]) -> None:
    path = REPO_ROOT / "schemas" / schema_file_name(event_type)
    assert json.loads(path.read_text()) == schema_of(event_type), (
        f"{path.name} disagrees with {event_type.__name__}; run `refinery schemas --write`"
    )


def test_older_versions_are_read_as_the_newest() -> None:
    chat = sample_events()[Stream.PREDICTIONS].model_dump(
        mode="json", exclude={"messages", "shadow_of"}
    )
    v1 = {**chat, "schema_version": 1, "endpoint": "chat.completions", "prompt": "user: hi"}
    upgraded = parse_versioned(PredictionEvent, json.dumps(v1))
    assert isinstance(upgraded, PredictionEvent)
    assert (upgraded.schema_version, upgraded.prompt, upgraded.messages) == (2, "user: hi", None)
    assert upgraded.event_id == v1["event_id"]
    example = sample_events()[Stream.EXAMPLES].model_dump(
        mode="json", exclude={"messages", "tenant", "key_id"}
    )
    for version in (1, 2):
        old = parse_versioned(ExampleEvent, {**example, "schema_version": version})
        assert isinstance(old, ExampleEvent) and old.schema_version == 3
        assert old.key_id is None
    feedback = sample_events()[Stream.FEEDBACK].model_dump(
        mode="json", exclude={"tenant", "key_id"}
    )
    rating = parse_versioned(FeedbackEvent, {**feedback, "schema_version": 1})
    assert isinstance(rating, FeedbackEvent) and rating.schema_version == 2
    alert = sample_events()[Stream.ALERTS].model_dump(
        mode="json", exclude={"episode_start", "notice", "episode_kind"}
    )
    told = parse_versioned(AlertEvent, {**alert, "schema_version": 1})
    assert isinstance(told, AlertEvent) and told.schema_version == 3
    assert (told.notice, told.episode_start, told.resolved) == (None, None, False)
    assert told.episode_kind == "quality"
    with pytest.raises(ValueError):
        parse_versioned(AlertEvent, {**alert, "schema_version": 1, "notice": "opened"})
    # Version 2 had one episode of every column: operational if only latency drifted in it.
    for columns, kind in ((["latency_ms"], "operational"), (["latency_ms", "segment"], "quality")):
        v2 = {**alert, "schema_version": 2, "drifted_columns": columns, "notice": "opened"}
        upgraded = parse_versioned(AlertEvent, v2)
        assert isinstance(upgraded, AlertEvent) and upgraded.schema_version == 3
        assert (upgraded.episode_kind, upgraded.notice) == (kind, "opened")
    resolved = {**alert, "schema_version": 2, "drifted_columns": [], "notice": "resolved"}
    assert parse_versioned(AlertEvent, resolved).episode_kind == "quality"  # type: ignore[attr-defined]
    with pytest.raises(ValueError):  # a v2 record holds no v3 field
        parse_versioned(AlertEvent, {**alert, "schema_version": 2, "episode_kind": "quality"})
    with pytest.raises(ValueError):  # a v1 record holds no v2 field
        parse_versioned(PredictionEvent, json.dumps({**v1, "messages": []}))
    with pytest.raises(ValueError):
        parse_versioned(FeedbackEvent, {**feedback, "schema_version": 1, "key_id": "k"})


def test_every_stream_has_a_sample() -> None:
    assert set(sample_events()) == set(STREAM_EVENTS)


@pytest.mark.parametrize("stream", list(Stream), ids=str)
def test_schema_file_and_model_accept_and_reject_alike(stream: Stream) -> None:
    event = sample_events()[stream]
    schema = json.loads((REPO_ROOT / "schemas" / schema_file_name(type(event))).read_text())
    good = json.loads(event.model_dump_json())
    jsonschema.validate(good, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    bad = {**good, "unexpected_field": 1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(ValueError):
        type(event).model_validate(bad)


def test_producer_refuses_wrong_event_for_stream(kafka_stack: Settings) -> None:
    with EventProducer(kafka_stack) as producer:
        feedback = sample_events()[Stream.FEEDBACK]
        with pytest.raises(EventValidationError, match="predictions carries PredictionEvent"):
            producer.send(Stream.PREDICTIONS, feedback)
        unvalidated = FeedbackEvent.model_construct(**{**feedback.model_dump(), "rating": "meh"})
        with pytest.raises(EventValidationError, match="rating"):
            producer.send(Stream.FEEDBACK, unvalidated)


def _consume_until(consumer: EventConsumer, want: int, timeout_s: float = 60) -> list[Received]:
    got: list[Received] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got.extend(consumer.poll(timeout_ms=500))
    return got


def test_every_event_round_trips_through_the_broker(kafka_stack: Settings) -> None:
    # Topics of their own: a trigger or a promotion on the session's topics would be acted on.
    kafka_stack = kafka_stack.model_copy(update={"topic_prefix": "roundtrip"})
    ensure_topics(kafka_stack)
    events = sample_events()
    with EventProducer(kafka_stack) as producer:
        for stream, event in events.items():
            meta = producer.send_and_wait(stream, event, key=f"k-{stream.value}")
            assert meta.offset >= 0
    group = f"roundtrip-{uuid.uuid4()}"
    with EventConsumer(kafka_stack, list(Stream), group_id=group) as consumer:
        received = {r.event.event_id: r for r in _consume_until(consumer, 10_000, timeout_s=15)}
        consumer.commit()
    for stream, event in events.items():
        got = received[event.event_id]
        assert got.event == event
        assert type(got.event) is type(event)
        assert got.topic == Topics.from_settings(kafka_stack).name(stream)
        assert got.key == f"k-{stream.value}"


def test_invalid_records_go_to_dlq_with_cause_and_consumer_goes_on(kafka_stack: Settings) -> None:
    topics = Topics.from_settings(kafka_stack)
    topic = topics.name(Stream.FEEDBACK)
    good_before = FeedbackEvent(feedback_id="f1", prediction_id="p-before", rating="up")
    good_after = FeedbackEvent(feedback_id="f2", prediction_id="p-after", rating="down")
    raw = KafkaProducer(bootstrap_servers=kafka_stack.kafka_bootstrap, acks="all")
    with EventProducer(kafka_stack) as producer:
        producer.send_and_wait(Stream.FEEDBACK, good_before, key="p")
        bad_rating = json.loads(good_before.model_dump_json()) | {"rating": "sideways"}
        bad_meta = raw.send(topic, key=b"p", value=json.dumps(bad_rating).encode()).get(30)
        garbage_meta = raw.send(topic, key=b"p", value=b"\x00not json").get(30)
        good = good_before.model_dump_json().encode()
        no_text_key_meta = raw.send(  # before good_after, in its partition
            topic, key=b"\xff\xfe", value=good, partition=garbage_meta.partition
        ).get(30)
        producer.send_and_wait(Stream.FEEDBACK, good_after, key="p")
    raw.close()

    group = f"dlq-{uuid.uuid4()}"
    with EventConsumer(kafka_stack, [Stream.FEEDBACK], group_id=group) as consumer:
        ids = set()
        deadline = time.monotonic() + 30
        while {good_before.event_id, good_after.event_id} - ids and time.monotonic() < deadline:
            ids |= {r.event.event_id for r in consumer.poll(timeout_ms=500)}
            consumer.commit()
        assert {good_before.event_id, good_after.event_id} <= ids, "consumer stopped at bad records"
        assert consumer.dead_lettered >= 3

    dlq = KafkaConsumer(
        topics.dlq(Stream.FEEDBACK),
        bootstrap_servers=kafka_stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    letters = {
        (d.source_partition, d.source_offset): d for d in (DeadLetter.from_record(r) for r in dlq)
    }
    dlq.close()
    bad = letters[(bad_meta.partition, bad_meta.offset)]
    assert bad.source_topic == topic
    assert bad.error_type == "ValidationError"
    assert "rating" in bad.error and "sideways" in bad.error
    assert json.loads(bad.value)["rating"] == "sideways"  # the original bytes are kept
    junk = letters[(garbage_meta.partition, garbage_meta.offset)]
    assert junk.value == b"\x00not json"
    assert "json" in junk.error.lower()
    no_text_key = letters[(no_text_key_meta.partition, no_text_key_meta.offset)]
    assert "utf-8" in no_text_key.error.lower() and no_text_key.key == b"\xff\xfe"


def test_a_canary_changes_the_gateway_routes_but_not_the_monitors_reference() -> None:
    """The monitor resets its drift reference only when the champion changes; a canary that
    starts or is rolled back leaves the windows alone (its answers are in none of them)."""
    base = {
        "model": "m",
        "version": "3",
        "served_name": "m-v3",
        "artifact_uri": "runs:/x/adapter",
        "kind": "lora",
    }
    switches = {
        action: (
            ModelEvent(**base, action=action).changes_routes,
            ModelEvent(**base, action=action).switches_champion,
        )
        for action in ("promoted", "rolled_back", "canary_started", "canary_stopped", "rejected")
    }
    assert switches == {
        "promoted": (True, True),
        "rolled_back": (True, True),
        "canary_started": (True, False),
        "canary_stopped": (True, False),
        "rejected": (False, False),
    }
