"""The monitor's join with a real faust worker on the real broker."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.partitioner import murmur2

from refinery.common.events import ExampleEvent, FeedbackEvent, PredictionEvent
from refinery.common.kafka import DeadLetter, EventProducer
from refinery.common.kafka.admin import consumer_lag
from refinery.common.settings import Settings
from refinery.common.topics import Stream, Topics
from refinery.monitor.join import example_id
from refinery.stack.monitor import monitor_process
from refinery.stack.process import ManagedProcess
from refinery.stack.stack import Stack
from tests.inference.helpers import read_events

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def monitor(stack: Stack, kafka_stack: Settings) -> Settings:
    stack.up(("monitor",))
    return kafka_stack


def prediction(pid: str) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=pid,
        endpoint="completions",
        prompt=f"Ticket: {pid}\nTeam:",
        completion=" billing",
        model="refinery-model",
        model_version="1",
        served_name="refinery-base",
        prompt_tokens=5,
        completion_tokens=1,
        latency_ms=3.0,
        segment="retail",
    )


def feedback(pid: str, user: str, rating: str, minutes: int = 0) -> FeedbackEvent:
    return FeedbackEvent(
        feedback_id=f"{pid}:{user}",
        prediction_id=pid,
        rating=rating,  # type: ignore[arg-type]
        user=user,
        occurred_at=T0 + timedelta(minutes=minutes),
        correction=" shipping" if rating == "down" else None,
    )


def examples_for(settings: Settings, pids: set[str]) -> dict[str, ExampleEvent]:
    """Examples of these predictions, deduplicated by event_id."""
    found = read_events(settings, Stream.EXAMPLES, pids, "prediction_id", timeout_s=60)
    return {e.event_id: e for e in found if isinstance(e, ExampleEvent)}


def assert_committed_to_the_end(settings: Settings, timeout_s: float = 30) -> None:
    """The monitor's committed offsets of the traffic reach the end: an event is
    acknowledged, and its offset committed, once its writes are on the broker, so every
    handled record must end up committed."""
    names = {Topics.from_settings(settings).name(s) for s in (Stream.PREDICTIONS, Stream.FEEDBACK)}
    deadline = time.monotonic() + timeout_s
    while True:
        lag = consumer_lag(settings.kafka_bootstrap, [settings.monitor_app_id])
        left = {t: n for t, n in lag.get(settings.monitor_app_id, {}).items() if t in names}
        if left == dict.fromkeys(names, 0):
            return
        assert time.monotonic() < deadline, f"records not committed: {left}"
        time.sleep(1)


def test_out_of_order_late_duplicate_and_missing_feedback(monitor: Settings) -> None:
    run = uuid.uuid4().hex[:8]
    normal, early, twice, missing, redelivered = (
        f"{run}-{n}" for n in ("normal", "early", "twice", "missing", "redo")
    )
    newer = feedback(twice, "u", "down", minutes=5)
    older = feedback(twice, "u", "up", minutes=1)
    dup = feedback(redelivered, "u", "up")
    with EventProducer(monitor) as producer:

        def send(stream: Stream, event: PredictionEvent | FeedbackEvent) -> None:
            producer.send_and_wait(stream, event, key=event.prediction_id)

        send(Stream.PREDICTIONS, prediction(normal))
        send(Stream.FEEDBACK, feedback(normal, "u", "up"))
        send(Stream.FEEDBACK, feedback(early, "u", "down"))  # before its prediction
        send(Stream.PREDICTIONS, prediction(missing))  # never rated
        send(Stream.PREDICTIONS, prediction(twice))
        send(Stream.FEEDBACK, newer)
        send(Stream.FEEDBACK, older)  # an older rating arriving late loses
        send(Stream.PREDICTIONS, prediction(redelivered))
        send(Stream.FEEDBACK, dup)
        send(Stream.FEEDBACK, dup)  # the same event delivered twice
        time.sleep(3)
        send(Stream.PREDICTIONS, prediction(early))  # late prediction: the join still holds

    got = examples_for(monitor, {normal, early, twice, redelivered})
    by_pid: dict[str, list[ExampleEvent]] = {}
    for e in got.values():
        by_pid.setdefault(e.prediction_id, []).append(e)
    assert missing not in by_pid
    assert [e.rating for e in by_pid[normal]] == ["up"]
    assert [(e.rating, e.correction) for e in by_pid[early]] == [("down", " shipping")]
    assert [e.rating for e in by_pid[twice]] == ["down"]
    assert len(by_pid[redelivered]) == 1 and by_pid[redelivered][0].event_id == example_id(dup)
    e = by_pid[normal][0]
    assert e.prompt == f"Ticket: {normal}\nTeam:" and e.completion == " billing"
    assert e.model_version == "1" and e.segment == "retail" and e.feedback_id == f"{normal}:u"


def test_malformed_events_go_to_dlq_and_the_worker_goes_on(monitor: Settings) -> None:
    topics = Topics.from_settings(monitor)
    pid = f"{uuid.uuid4().hex[:8]}-after-garbage"
    raw = KafkaProducer(bootstrap_servers=monitor.kafka_bootstrap, acks="all")
    bad = raw.send(topics.name(Stream.FEEDBACK), key=pid.encode(), value=b"{not json").get(30)
    wrong_key = raw.send(
        topics.name(Stream.PREDICTIONS), key=b"other", value=prediction(pid).to_bytes()
    ).get(30)
    not_text = raw.send(
        topics.name(Stream.PREDICTIONS), key=b"\xff\xfe", value=prediction(pid).to_bytes()
    ).get(30)
    raw.close()
    with EventProducer(monitor) as producer:
        producer.send_and_wait(Stream.PREDICTIONS, prediction(pid), key=pid)
        producer.send_and_wait(Stream.FEEDBACK, feedback(pid, "u", "up"), key=pid)
    assert len(examples_for(monitor, {pid})) == 1

    letters = []
    for stream in (Stream.FEEDBACK, Stream.PREDICTIONS):
        consumer = KafkaConsumer(
            topics.dlq(stream),
            bootstrap_servers=monitor.kafka_bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=5000,
        )
        letters += [DeadLetter.from_record(r) for r in consumer]
        consumer.close()
    where = {(d.source_topic, d.source_partition, d.source_offset): d for d in letters}
    assert_committed_to_the_end(monitor)  # dead letters are acknowledged too
    garbage = where[(topics.name(Stream.FEEDBACK), bad.partition, bad.offset)]
    assert "json" in garbage.error.lower() and garbage.value == b"{not json"
    misfiled = where[(topics.name(Stream.PREDICTIONS), wrong_key.partition, wrong_key.offset)]
    assert "prediction_id" in misfiled.error
    assert json.loads(misfiled.value)["prediction_id"] == pid
    undecodable = where[(topics.name(Stream.PREDICTIONS), not_text.partition, not_text.offset)]
    assert "utf-8" in undecodable.error.lower()  # a key that is no text: no crash either


def test_worker_killed_and_restarted_loses_and_duplicates_nothing(
    stack: Stack, monitor: Settings
) -> None:
    run = uuid.uuid4().hex[:8]
    pids = [f"{run}-{i}" for i in range(300)]
    ratings = {pid: feedback(pid, "u", "up" if i % 3 else "down") for i, pid in enumerate(pids)}
    worker = stack._started["monitor"]
    with EventProducer(monitor) as producer:
        for i, pid in enumerate(pids):
            producer.send(Stream.PREDICTIONS, prediction(pid), key=pid)
            producer.send(Stream.FEEDBACK, ratings[pid], key=pid)
            if i == 150:
                producer.flush()
                time.sleep(0.5)  # let it work on the first half, then crash it mid-stream
                worker.kill()
        producer.flush()
    stack.up(("monitor",))
    got = examples_for(monitor, set(pids))
    assert set(got) == {example_id(f) for f in ratings.values()}
    assert {e.prediction_id for e in got.values()} == set(pids)
    assert_committed_to_the_end(monitor)


def assigned(worker: ManagedProcess, topic: str) -> set[int]:
    """The partitions of ``topic`` in the worker's latest assignment (faust logs a table)."""
    text = worker.log_file.read_text(errors="replace")
    table = text[text.rfind("Setting newly assigned partitions") :]
    table = table[: table.find("Executing _on_partitions_assigned")]
    found = re.search(rf"\|\s*{re.escape(topic)}\s*\|\s*\{{([\d, -]*)\}}", table)
    partitions: set[int] = set()
    for part in found.group(1).split(",") if found else []:  # "0", "1-2"
        low, _, high = part.strip().partition("-")
        partitions |= set(range(int(low), int(high or low) + 1))
    return partitions


def settled(worker: ManagedProcess) -> bool:
    """Its latest assignment is recovered and it is processing again."""
    text = worker.log_file.read_text(errors="replace")
    return "Worker ready" in text[text.rfind("Setting newly assigned partitions") :]


def test_two_workers_split_the_partitions_and_each_example_is_there_once(
    stack: Stack, monitor: Settings
) -> None:
    first = stack._started["monitor"]
    second = monitor_process(monitor, "monitor-2")
    second.start()
    try:
        predictions = Topics.from_settings(monitor).name(Stream.PREDICTIONS)
        deadline = time.monotonic() + 90
        stable_since = None
        while True:  # both logged their share and recovered it, and it held for 3 s
            one, two = assigned(first, predictions), assigned(second, predictions)
            split = one and two and not one & two and len(one | two) == monitor.topic_partitions
            if split and settled(first) and settled(second):
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since > 3:
                    break
            else:
                stable_since = None
            assert time.monotonic() < deadline, f"no split: {one} / {two}"
            time.sleep(0.5)
        # The join-state sweep of partition P must run where P of the traffic is.
        sweeps = f"{monitor.monitor_app_id}-join-sweep"
        assert (assigned(first, sweeps), assigned(second, sweeps)) == (one, two)
        run = uuid.uuid4().hex[:8]
        pids = [f"{run}-{i}" for i in range(200)]
        ratings = {pid: feedback(pid, "u", "down" if i % 4 else "up") for i, pid in enumerate(pids)}
        with EventProducer(monitor) as producer:
            for pid in pids:
                producer.send(Stream.PREDICTIONS, prediction(pid), key=pid)
                producer.send(Stream.FEEDBACK, ratings[pid], key=pid)
            producer.flush()
        found = read_events(monitor, Stream.EXAMPLES, set(pids), "prediction_id", timeout_s=120)
        # At-least-once: a record re-read after a commit interval is re-emitted with the same
        # event_id, so after dedup each example is there exactly once.
        missing = set(pids) - {e.prediction_id for e in found}
        where = sorted({(murmur2(p.encode()) & 0x7FFFFFFF) % 3 for p in missing})
        assert not missing, f"{len(missing)} missing, on partitions {where}: {one} / {two}"
        assert {e.event_id for e in found} == {example_id(f) for f in ratings.values()}
        print(f"two workers: {len(found)} example records for {len(pids)} examples")
    finally:
        second.stop()
