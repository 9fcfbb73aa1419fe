"""Drift work spread over two monitor workers gives the windows one worker gives.

The same traffic, over 6 partitions and sent while they run, is read by one worker (one
consumer group) and by two workers (another group) side by side: each window holds the
same predictions in the same order and its tests come out alike, and each of the two
workers gathered about half of the rows (the block keepers run beside the join,
refinery/monitor/blocks.py).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml

from refinery.common.kafka import EventProducer, ensure_topics
from refinery.common.settings import Settings
from refinery.common.task import load_task
from refinery.common.topics import Stream
from refinery.demo.traffic_events import synthetic_traffic
from refinery.stack.monitor import monitor_process
from refinery.stack.process import ManagedProcess
from tests.conftest import TEST_TASK
from tests.metrics import scrape_until, value

PARTITIONS, REFERENCE, WINDOW = 6, 120, 60
STABLE, SHIFTED = 240, 120  # 4 windows after the reference: 2 stable, 2 shifted
TASK = load_task(TEST_TASK).task
# Everything a window's line says but the thumbs (ratings are not sent here) and timings.
WINDOW_LINE = re.compile(
    r"drift window (\d+) v\S+: (\d+) predictions, .* drifted=(.*) \(tests.*rows (\w+)"
)


@pytest.fixture(scope="module")
def split_settings(kafka_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    var = tmp_path_factory.mktemp("split-var")
    task = yaml.safe_load(TEST_TASK.read_text())
    task["drift"] = {
        "window_size": WINDOW,
        "window_minutes": 60,  # closed by count only
        "reference_size": REFERENCE,
        "min_examples": 100000000,  # no triggers here
    }
    (var / "task.yaml").write_text(yaml.safe_dump(task))
    settings = kafka_stack.model_copy(
        update={
            "var_dir": var,
            "task_file": var / "task.yaml",
            "topic_prefix": f"split{uuid.uuid4().hex[:6]}",
            "topic_partitions": PARTITIONS,
        }
    )
    ensure_topics(settings)
    return settings


def send_traffic(settings: Settings) -> None:
    """Stable traffic, then the shift (in later buckets of time), about 60 a second."""
    with EventProducer(settings) as producer:
        for seed, domain, n in ((0, "retail", STABLE), (1, "smart_home", SHIFTED)):
            traffic = synthetic_traffic(TASK, "1", n, domain=domain, rated_share=0.0, seed=seed)
            for i, (p, _) in enumerate(traffic):
                producer.send(Stream.PREDICTIONS, p, key=p.prediction_id)
                if i % 30 == 29:
                    producer.flush()
                    time.sleep(0.5)
            producer.flush()
            time.sleep(1.2)


@pytest.fixture(scope="module")
def groups(split_settings: Settings) -> Iterator[dict[str, list[tuple[ManagedProcess, int]]]]:
    """One worker of group ``one``, two of group ``two``, all reading the same traffic."""
    workers: dict[str, list[tuple[ManagedProcess, int]]] = {"one": [], "two": []}
    port = split_settings.monitor_metrics_port + 6
    for group, count in (("one", 1), ("two", 2)):
        settings = split_settings.model_copy(
            update={"monitor_app_id": f"{split_settings.topic_prefix}-{group}-monitor"}
        )
        for i in range(count):
            name = f"split-{group}-{i}"
            workers[group].append((monitor_process(settings, name, metrics_port=port), port))
            port += 1
    for group in workers.values():
        for worker, _ in group:
            worker.start()
    time.sleep(15)  # the second worker of group two joins: the partitions are split
    send_traffic(split_settings)
    yield workers
    for group in workers.values():
        for worker, _ in group:
            worker.stop()


def windows_of(workers: list[tuple[ManagedProcess, int]]) -> dict[int, tuple[str, ...]]:
    """Window index -> (predictions, drift verdict and closest test, rows digest), from
    whichever worker owns the windows, once all four closed."""
    deadline = time.monotonic() + 240
    while True:
        found = {
            int(m.group(1)): m.group(2, 3, 4)
            for worker, _ in workers
            for m in WINDOW_LINE.finditer(worker.log_file.read_text(errors="replace"))
        }
        if len(found) >= 4 or time.monotonic() > deadline:
            tails = "\n".join(w.log_tail(30) for w, _ in workers)
            assert len(found) >= 4, f"windows closed: {sorted(found)}; logs:\n{tails}"
            return found
        time.sleep(1)


def test_two_workers_close_the_windows_one_worker_closes_and_share_the_rows(
    groups: dict[str, list[tuple[ManagedProcess, int]]],
) -> None:
    one, two = windows_of(groups["one"]), windows_of(groups["two"])
    assert one == two
    assert [one[i][0] for i in range(4)] == [str(WINDOW)] * 4
    assert all(verdict.startswith("-") for _, verdict, _ in (one[0], one[1]))  # stable
    assert not one[3][1].startswith("-"), one  # the shift drifted
    rows = []
    for _, port in groups["two"]:
        _, samples = scrape_until(
            f"http://127.0.0.1:{port}/metrics",
            lambda s: value(s, "refinery_monitor_window_rows_total") is not None,
        )
        rows.append(value(samples, "refinery_monitor_window_rows_total") or 0)
    print(f"rows gathered per worker: {rows}")
    # Each worker owns 3 of the 6 partitions (a rebalance may replay some).
    assert sum(rows) >= STABLE + SHIFTED and min(rows) >= 0.3 * (STABLE + SHIFTED), rows
