"""A monitor worker SIGKILLed mid-window and after a close: each prediction counts once,
the window closes once, and its alert goes out under one id.

faust is at-least-once: a restarted worker re-reads what it did since its last committed
offset (the join and its block keepers from the traffic and their table's changelog, the
windows their topic). This
worker commits rarely (faust's own ``BROKER_COMMIT_INTERVAL``), so every kill replays
everything the worker did, not only when the kill happens to beat a commit.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from refinery.common.events import AlertEvent, FeedbackEvent, ModelEvent, PredictionEvent
from refinery.common.kafka import EventConsumer, EventProducer, ensure_topics
from refinery.common.settings import Settings
from refinery.common.task import load_task
from refinery.common.topics import Stream
from refinery.demo.traffic_events import synthetic_traffic
from refinery.stack.monitor import monitor_process
from refinery.stack.process import ManagedProcess
from tests.conftest import TEST_TASK

REFERENCE, WINDOW = 80, 40
TASK = load_task(TEST_TASK).task
WINDOW_LINE = re.compile(
    r"drift window (\d+) v(\S+): (\d+) predictions, (\d+)/(\d+) thumbs down, drifted=(\S+),"
)
Traffic = list[tuple[PredictionEvent, FeedbackEvent | None]]


@pytest.fixture(scope="module")
def restart_worker(
    kafka_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, ManagedProcess]]:
    var = tmp_path_factory.mktemp("restart-var")
    task = yaml.safe_load(TEST_TASK.read_text())
    task["drift"] = {
        "window_size": WINDOW,
        "window_minutes": 60,  # closed by count only: the test says when
        "reference_size": REFERENCE,
        "min_examples": 100000000,  # no triggers here (tests/monitor/test_drift_stream.py)
    }
    (var / "task.yaml").write_text(yaml.safe_dump(task))
    settings = kafka_stack.model_copy(
        update={
            "var_dir": var,
            "task_file": var / "task.yaml",
            "topic_prefix": f"restart{uuid.uuid4().hex[:6]}",
            "monitor_app_id": f"restart{uuid.uuid4().hex[:6]}-monitor",
        }
    )
    ensure_topics(settings)
    worker = monitor_process(settings, "restart-monitor")
    # faust's own settings: commit rarely, so a kill replays all the worker did; and let
    # the restarted worker take over in seconds, not the default session timeout's minute.
    worker.env.update(BROKER_COMMIT_INTERVAL="3600", BROKER_SESSION_TIMEOUT="10")
    worker.start()
    yield settings, worker
    worker.stop()


class WindowTopic:
    """What the block keepers sent to the windows (``<app id>-window``), read from the start."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            enable_auto_commit=False,
        )
        partition = TopicPartition(f"{settings.monitor_app_id}-window", 0)
        self.consumer.assign([partition])
        self.consumer.seek_to_beginning(partition)
        self.records: list[dict[str, Any]] = []

    def wait(self, done: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not done(self.records):
            assert time.monotonic() < deadline, f"not forwarded to the windows: {what}"
            self._poll()

    def drain(self) -> None:
        """Read on until a poll finds nothing new."""
        while self._poll():
            pass

    def _poll(self) -> int:
        batches = self.consumer.poll(timeout_ms=500).values()
        for batch in batches:
            for record in (json.loads(message.value) for message in batch):
                # A block's predictions and ratings, as the windows take them.
                is_block = record["kind"] == "block"
                self.records += record["predictions"] if is_block else [record]
        return sum(len(batch) for batch in batches)

    def wait_for_ratings(self, traffic: Traffic) -> None:
        want = {fb.feedback_id for _, fb in traffic if fb is not None}
        self.wait(
            lambda records: want <= {r.get("feedback_id") for r in records},
            f"ratings of {len(want)} predictions",
        )

    def close(self) -> None:
        self.consumer.close()


def send(settings: Settings, traffic: Traffic, *, feedback: bool = True) -> None:
    with EventProducer(settings) as producer:
        for p, fb in traffic:
            producer.send(Stream.PREDICTIONS, p, key=p.prediction_id)
            if feedback and fb is not None:
                producer.send(Stream.FEEDBACK, fb, key=fb.prediction_id)
        producer.flush()


def window_lines(worker: ManagedProcess) -> list[tuple[int, str, int, int, int]]:
    """(index, version, predictions, thumbs down, thumbs) of every window line logged."""
    text = worker.log_file.read_text(errors="replace")
    return [(int(m[1]), m[2], int(m[3]), int(m[4]), int(m[5])) for m in WINDOW_LINE.finditer(text)]


def wait_for(worker: ManagedProcess, found: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 90
    while not found():
        assert time.monotonic() < deadline, f"no {what} in:\n{worker.log_tail(40)}"
        time.sleep(0.5)


def restart(worker: ManagedProcess) -> None:
    worker.kill()
    worker.start()


def alerts_of(settings: Settings) -> list[AlertEvent]:
    """Every alert on the topic (waiting for the first one)."""
    with EventConsumer(settings, [Stream.ALERTS], group_id=f"test-{uuid.uuid4()}") as consumer:
        found: list[AlertEvent] = []
        idle, deadline = 0, time.monotonic() + 30
        while idle < 4 or (not found and time.monotonic() < deadline):
            batch = consumer.poll(timeout_ms=500)
            idle = 0 if batch else idle + 1
            found += [item.event for item in batch if isinstance(item.event, AlertEvent)]
    return found


def test_a_killed_worker_counts_each_prediction_once_and_closes_a_window_once(
    restart_worker: tuple[Settings, ManagedProcess],
) -> None:
    settings, worker = restart_worker
    started = time.monotonic()
    forwarded = WindowTopic(settings)
    try:
        # The reference, unrated: its ratings would land in whichever window is open then.
        reference = list(synthetic_traffic(TASK, "1", REFERENCE, domain="retail", seed=41))
        send(settings, reference, feedback=False)
        forwarded.wait(
            lambda rs: sum(r["kind"] == "prediction" for r in rs) >= REFERENCE, "the reference"
        )
        # A shifted window, every prediction rated: each rating goes in a block after its
        # prediction, so seeing the ratings means the predictions are in the topic too.
        window = list(
            synthetic_traffic(
                TASK, "1", WINDOW, domain="smart_home", down_rate=0.4, rated_share=1.0, seed=42
            )
        )
        half = WINDOW // 2
        send(settings, window[:half])
        forwarded.wait_for_ratings(window[:half])
        time.sleep(2)  # the windows apply what the join forwarded
        restart(worker)  # SIGKILL mid-window

        send(settings, window[half:-1])
        forwarded.wait_for_ratings(window[:-1])
        # The restarted windows re-read their whole topic (nothing was committed: the commit
        # interval is an hour), and the join re-reads the traffic; the counts must hold.
        time.sleep(2)
        assert window_lines(worker) == [], "a window closed before it had all its predictions"
        send(settings, window[-1:], feedback=False)  # the last: its rating would come late
        wait_for(worker, lambda: bool(window_lines(worker)), "closed window")
        rated = [fb for _, fb in window[:-1] if fb is not None]
        down = sum(fb.rating == "down" for fb in rated)
        assert window_lines(worker) == [(0, "1", WINDOW, down, len(rated))]
        first = alerts_of(settings)
        assert len(first) == 1 and first[0].window_size == WINDOW
        restart(worker)  # SIGKILL after the close: everything is replayed once more

        with EventProducer(settings) as producer:
            promoted = ModelEvent(
                model="refinery-model",
                version="2",
                action="promoted",
                served_name="refinery-model-v2",
                artifact_uri="file:///nowhere",
                kind="lora",
            )
            producer.send_and_wait(Stream.MODELS, promoted, key="refinery-model")
        # The reset is read after every replayed record of the window topic.
        wait_for(
            worker,
            lambda: "windows: reference reset to v2" in worker.log_file.read_text(errors="replace"),
            "reset to v2",
        )
        assert {line[0] for line in window_lines(worker)} == {0}, window_lines(worker)
        alerts = alerts_of(settings)
        assert {a.event_id for a in alerts} == {first[0].event_id}
        print(f"kill/restart test: {time.monotonic() - started:.1f}s")
    finally:
        forwarded.close()


def wait_in_changelog(settings: Settings, keys: set[str]) -> None:
    """Until the join table's changelog has a state carrying drift rows for each of ``keys``."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","))
    topic = f"{settings.monitor_app_id}-join-changelog"
    consumer.assign([TopicPartition(topic, p) for p in range(settings.topic_partitions)])
    consumer.seek_to_beginning()
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    try:
        while not keys <= seen:
            assert time.monotonic() < deadline, f"not in the changelog: {sorted(keys - seen)}"
            for batch in consumer.poll(timeout_ms=500).values():
                seen |= {
                    json.loads(r.key)
                    for r in batch
                    if r.value is not None and json.loads(r.value).get("rows")
                }
    finally:
        consumer.close()


def test_a_killed_worker_finds_the_open_blocks_rows_in_the_join_states(
    restart_worker: tuple[Settings, ManagedProcess],
) -> None:
    """The open block's rows live in memory and in the join states that carry them: a worker
    killed with blocks open seals them, after the restart, with every row once."""
    settings, worker = restart_worker
    forwarded = WindowTopic(settings)
    try:
        # An hour ahead: no later prediction and no idle clock closes their buckets.
        ahead = [
            p.model_copy(update={"occurred_at": p.occurred_at + timedelta(hours=1)})
            for p, _ in synthetic_traffic(TASK, "1", 40, domain="retail", seed=43)
        ]
        send(settings, [(p, None) for p in ahead])
        wait_in_changelog(settings, {p.prediction_id for p in ahead})
        restart(worker)  # SIGKILL: the open blocks were never written apart from the states
        later = [
            p.model_copy(update={"occurred_at": p.occurred_at + timedelta(hours=2)})
            for p, _ in synthetic_traffic(TASK, "1", 40, domain="retail", seed=44)
        ]
        send(settings, [(p, None) for p in later])  # seals the hour-ahead blocks
        wanted = {p.prediction_id for p in ahead}

        def ahead_rows(records: list[dict[str, Any]]) -> list[str]:
            return [r["prediction_id"] for r in records if r.get("prediction_id") in wanted]

        forwarded.wait(lambda rs: set(ahead_rows(rs)) == wanted, "the hour-ahead predictions")
        time.sleep(2)  # a row sent twice would come in the same seal, or soon after
        forwarded.drain()
        assert sorted(ahead_rows(forwarded.records)) == sorted(wanted)
    finally:
        forwarded.close()
