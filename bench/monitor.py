"""Monitor throughput and detection delay, one run.

The same pre-written predictions and feedback are read (a) by a plain aiokafka consumer
that only counts, (b) by a bare faust worker that decodes each record's JSON and counts
(``bench/faust_count.py``: the baseline for a faust worker, #14) and (c) by a fresh
monitor worker (faust: join, examples, windows, Evidently on every closed window). Rates
are events over the time between the first and the last record each produced or counted,
so start-up is left out of all: the monitor's includes its drift tests' warm-up (imports
and a first report, ~10 s of CPU), so it reads the same events from topics of its own,
written once it has warmed up (the producer runs beside it; the others read topics
written before they start). The traffic turns to a mix with the new product line after
a number of stable windows; the worker's window log gives the detection delay in windows.

Needs Kafka (`refinery up`, or `make bench`); uses its own topic prefix and consumer group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from kafka import KafkaConsumer

from bench.quiet import without_retraining
from bench.report import Figure, record
from refinery.common.kafka import EventProducer, ensure_topics
from refinery.common.settings import IMPORT_ROOT, REPO_ROOT, Settings, get_settings
from refinery.common.task import load_task
from refinery.common.topics import Stream, Topics
from refinery.demo.traffic_events import synthetic_traffic
from refinery.stack.monitor import monitor_process
from refinery.stack.process import ManagedProcess

WARMED_UP = "drift tests warmed up"
WINDOW_LINE = re.compile(r"drift window (\d+) v\S+: (\d+) predictions, .* drifted=(\S+),")


def produce(settings: Settings, stable: int, shifted: int, share: float) -> int:
    task = load_task(settings.task_file).task
    sent = 0
    with EventProducer(settings) as producer:
        phases = [
            synthetic_traffic(task, "1", stable, seed=1),
            synthetic_traffic(task, "1", shifted, shifted_share=share, seed=2),
        ]
        for phase in phases:
            for p, fb in phase:
                producer.send(Stream.PREDICTIONS, p, key=p.prediction_id)
                sent += 1
                if fb is not None:
                    producer.send(Stream.FEEDBACK, fb, key=fb.prediction_id)
                    sent += 1
        producer.flush()
    return sent


async def plain_count(settings: Settings, total: int) -> float:
    """Events/s of a consumer that deserializes nothing and only counts."""
    topics = Topics.from_settings(settings)
    consumer = AIOKafkaConsumer(
        topics.name(Stream.PREDICTIONS),
        topics.name(Stream.FEEDBACK),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"bench-count-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    count, first, at_first = 0, 0.0, 0
    try:
        while count < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            count += sum(len(records) for records in batch.values())
            if batch and not first:  # the clock starts after the first batch
                first, at_first = time.perf_counter(), count
        return (count - at_first) / (time.perf_counter() - first)
    finally:
        await consumer.stop()


def bare_faust_rate(settings: Settings, total: int) -> float:
    """Events/s of a faust worker that decodes and counts (``bench/faust_count.py``)."""
    topics = Topics.from_settings(settings)
    with tempfile.TemporaryDirectory(prefix="refinery-bench-faust-") as tmp:
        out = Path(tmp) / "rate.json"
        worker = ManagedProcess(
            name=f"bench-faust-count-{settings.topic_prefix}",
            argv=[
                *(sys.executable, "-m", "faust", "-A", "bench.faust_count", "--datadir", tmp),
                *("worker", "--without-web", "-l", "warn"),
            ],
            run_dir=settings.run_dir,
            log_dir=settings.log_dir,
            health=lambda: True,
            env={
                **settings.process_env(),
                "PYTHONPATH": f"{IMPORT_ROOT}:{REPO_ROOT}",  # bench/ is at the root
                "BENCH_COUNT_APP_ID": f"bench-count-{uuid.uuid4().hex[:6]}",
                "BENCH_COUNT_TOPICS": ",".join(
                    topics.name(s) for s in (Stream.PREDICTIONS, Stream.FEEDBACK)
                ),
                "BENCH_COUNT_TOTAL": str(total),
                "BENCH_COUNT_OUT": str(out),
            },
            cwd=REPO_ROOT,
        )
        worker.start()
        try:
            deadline = time.monotonic() + 300
            while not out.exists():
                if worker.pid() is None:
                    raise SystemExit(f"the bare faust worker exited:\n{worker.log_tail()}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"the bare faust worker counted too slowly; {worker.log_file}")
                time.sleep(0.2)
            return float(json.loads(out.read_text())["events_per_s"])
        finally:
            worker.stop()


def monitor_rate(
    settings: Settings, traffic: Callable[[], int], examples: int, windows: int
) -> tuple[float, float, str]:
    """Events/s through the monitor: from its first example to its last one written, and to
    the last window closed (the windows run on one worker, after the join). The worker
    starts on empty topics and gets the ``traffic`` once it has warmed up (its drift tests'
    imports and first report: start-up, left out as the other readers' is)."""
    worker = monitor_process(settings, f"bench-{settings.monitor_app_id}")
    worker.start()
    deadline = time.monotonic() + 300
    while WARMED_UP not in worker.log_file.read_text(errors="replace"):
        if worker.pid() is None or time.monotonic() > deadline:
            worker.stop()
            raise SystemExit(f"the monitor worker did not warm up:\n{worker.log_tail()}")
        time.sleep(0.2)
    total = traffic()
    consumer = KafkaConsumer(
        Topics.from_settings(settings).name(Stream.EXAMPLES),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=30_000,
    )
    stamps = []
    try:
        for record in consumer:
            stamps.append(record.timestamp)
            if len(stamps) >= examples:
                break
        deadline = time.monotonic() + 300
        while True:
            log = worker.log_file.read_text(errors="replace")
            if len(WINDOW_LINE.findall(log)) >= windows or time.monotonic() > deadline:
                windows_done = time.time()
                break
            time.sleep(0.2)
    finally:
        consumer.close()
        worker.stop()
    if len(stamps) < examples:
        raise SystemExit(f"only {len(stamps)} of {examples} examples; see {worker.log_file}")
    joined = total / ((max(stamps) - min(stamps)) / 1000)
    return joined, total / (windows_done - min(stamps) / 1000), log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stable-windows", type=int, default=10)
    parser.add_argument("--shifted-windows", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.3, help="new-domain share after onset")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:6]
    base = get_settings()
    settings = base.model_copy(
        update={"topic_prefix": f"bench-{run}", "monitor_app_id": f"bench-monitor-{run}"}
    )
    # The monitor reads the same events from topics of its own, written once it is warm.
    monitor_settings = settings.model_copy(update={"topic_prefix": f"bench-{run}-monitor"})
    spec = load_task(settings.task_file).drift
    ensure_topics(settings)
    ensure_topics(monitor_settings)
    stable = spec.reference_size + args.stable_windows * spec.window_size
    shifted = args.shifted_windows * spec.window_size
    total = produce(settings, stable, shifted, args.share)
    predictions = stable + shifted
    examples = total - predictions
    print(
        f"{predictions} predictions + {examples} ratings = {total} events "
        f"(window {spec.window_size}, reference {spec.reference_size}; "
        f"{args.share:.0%} new domain after {args.stable_windows} stable windows)"
    )
    expected_windows = (predictions - spec.reference_size) // spec.window_size
    with without_retraining(base):  # the stack's retrainer shares these cores
        counted = asyncio.run(plain_count(settings, total))
        bare_faust = bare_faust_rate(settings, total)
        joined, windowed, log = monitor_rate(
            monitor_settings,
            lambda: produce(monitor_settings, stable, shifted, args.share),
            examples,
            expected_windows,
        )
    print("| reader | events/s | vs bare faust |\n|---|---|---|")
    print(f"| plain aiokafka consumer, counting | {counted:,.0f} | {counted / bare_faust:.2f}x |")
    print(f"| bare faust worker, JSON and count | {bare_faust:,.0f} | 1.00x |")
    figures = [
        Figure(
            "bare faust worker (JSON, count)",
            bare_faust,
            "plain aiokafka consumer",
            counted,
            "events/s",
        )
    ]
    for name, rate in (
        ("join, to the last example", joined),
        ("+ windows and drift tests", windowed),
    ):
        print(f"| monitor worker: {name} | {rate:,.0f} | {rate / bare_faust:.4f}x |")
        figures.append(
            Figure(
                f"monitor worker: {name}",
                rate,
                "bare faust worker",
                bare_faust,
                "events/s",
                ">= 0.5",
                minimum=10_000,
            )
        )
    windows = [(int(m[0]), m[2]) for m in WINDOW_LINE.findall(log)]
    onset = args.stable_windows  # the first window made only of traffic after onset
    false_alarms = [i for i, cols in windows if i < onset - 1 and cols != "-"]
    detected = [i for i, cols in windows if i >= onset - 1 and cols != "-"]
    print(f"windows closed: {len(windows)}; false alarms before onset: {len(false_alarms)}")
    if detected:
        first = detected[0]
        print(
            f"first drifted window: {first} (onset in window {onset - 1}/{onset} boundary): "
            f"delay {max(0, first - onset + 1)} window(s); drifted: "
            f"{dict(windows)[first]}"
        )
    else:
        print("no drift detected after onset")
    record(
        "monitor",
        figures,
        f"{predictions} predictions and {examples} ratings written to fresh topics first, then "
        "read by each reader in turn from the start; a rate is records over the time from "
        "the first record read to the last (the monitor: to its last example written, and "
        f"to its last window closed; window {spec.window_size}, Evidently on each; the same "
        "events written to topics of its own once it had warmed up, the producer beside it).",
    )


if __name__ == "__main__":
    main()
