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
Then (d) the same with ``--workers`` monitor workers in one group, the partitions split
between them: how the join scales out (the windows stay on one worker).

Needs Kafka (`refinery up`, or `make bench`); uses its own topic prefix and consumer group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from kafka import KafkaConsumer

from bench.cpu import cpu_seconds, since
from bench.harness import free_port
from bench.quiet import without_retraining
from bench.report import Figure, record
from refinery.common.kafka import EventProducer, ensure_topics
from refinery.common.settings import IMPORT_ROOT, REPO_ROOT, Settings, get_settings
from refinery.common.task import load_task
from refinery.common.topics import Stream, Topics
from refinery.demo.traffic_events import synthetic_traffic
from refinery.monitor.notices import FIRING
from refinery.stack.monitor import monitor_process
from refinery.stack.process import ManagedProcess

WARMED_UP = "drift tests warmed up"
WINDOW_LINE = re.compile(r"drift window (\d+) v\S+: (\d+) predictions, .* drifted=(\S+),")
#: A window's drift tests and its record (Evidently snapshot; a notifying one's widgets)
WINDOW_COST = re.compile(
    r"drifted=(\S+),.* \(tests ([0-9.]+) s, record ([0-9.]+) s\)(?:, notice (\S+),)?"
)


#: An event as written: its stream, key and value.
Record = tuple[Stream, bytes, bytes]


def traffic_records(settings: Settings, stable: int, shifted: int, share: float) -> list[Record]:
    """The bench's events, made and encoded once: every reader's topics get the same bytes,
    and writing them beside the monitor costs its cores no more than the producer itself
    (validating and encoding them took about half the monitor's CPU per event)."""
    task = load_task(settings.task_file).task
    records: list[Record] = []
    phases = [
        synthetic_traffic(task, "1", stable, seed=1),
        synthetic_traffic(task, "1", shifted, shifted_share=share, seed=2),
    ]
    for phase in phases:
        for p, fb in phase:
            records.append((Stream.PREDICTIONS, p.prediction_id.encode(), p.to_bytes()))
            if fb is not None:
                records.append((Stream.FEEDBACK, fb.prediction_id.encode(), fb.to_bytes()))
    return records


def produce(settings: Settings, records: list[Record]) -> int:
    topics = Topics.from_settings(settings)
    with EventProducer(settings) as producer:
        for stream, key, value in records:
            producer.send_raw(topics.name(stream), value, key)
        producer.flush()
    return len(records)


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


@dataclass
class MonitorRun:
    joined: float  # events/s, to the last example written
    windowed: float  # events/s, to the last window closed
    log: str  # the workers' logs
    cpu_per_k: dict[str, float]  # CPU s per 1,000 events during the join, by process
    busy: float  # of the machine's cores, the share those processes used during the join


def monitor_rate(
    settings: Settings, traffic: Callable[[], int], examples: int, windows: int, workers: int = 1
) -> MonitorRun:
    """Events/s through the monitor: from its first example to its last one written, and to
    the last window closed (the windows run on one worker, after the join). The ``workers``
    (one consumer group: the partitions split between them) start on empty topics and get
    the ``traffic`` once each has warmed up (its drift tests' imports and first report:
    start-up, left out as the other readers' is). Also the CPU the workers, the stack's
    processes and this one (the producer) spent from the traffic's start to the last
    example: whether the join was short of cores."""
    group = [
        monitor_process(settings, f"bench-{settings.monitor_app_id}-{i}", free_port())
        for i in range(workers)
    ]
    for worker in group:
        worker.start()

    def logs() -> str:
        return "".join(w.log_file.read_text(errors="replace") for w in group)

    try:
        deadline = time.monotonic() + 300
        while logs().count(WARMED_UP) < workers:
            if any(w.pid() is None for w in group) or time.monotonic() > deadline:
                tails = "\n".join(w.log_tail() for w in group)
                raise SystemExit(f"the monitor workers did not warm up:\n{tails}")
            time.sleep(0.2)
        cpu_before, own_before, started = (
            cpu_seconds(settings.run_dir),
            time.process_time(),
            time.time(),
        )
        total = traffic()
        stamps = _example_stamps(settings, examples)
        cpu = since(cpu_before, cpu_seconds(settings.run_dir))
        cpu["bench producer"] = time.process_time() - own_before
        deadline = time.monotonic() + 300
        while len(WINDOW_LINE.findall(logs())) < windows and time.monotonic() < deadline:
            time.sleep(0.2)
        windows_done = time.time()
        log = logs()
    finally:
        for worker in group:
            worker.stop()
    if len(stamps) < examples:
        raise SystemExit(f"only {len(stamps)} of {examples} examples; see {group[0].log_file}")
    names = {worker.name for worker in group}
    cpu = {"monitor workers": sum(cpu.get(name, 0.0) for name in names)} | {
        name: spent for name, spent in cpu.items() if name not in names
    }
    wall = max(stamps) / 1000 - started
    return MonitorRun(
        joined=total / ((max(stamps) - min(stamps)) / 1000),
        windowed=total / (windows_done - min(stamps) / 1000),
        log=log,
        cpu_per_k={name: 1000 * spent / total for name, spent in cpu.items() if spent >= 0.05},
        busy=sum(cpu.values()) / (wall * (os.cpu_count() or 1)),
    )


def window_cost(run: MonitorRun, events_per_window: float) -> Figure:
    """A window's drift cost (its tests and its record, on the worker that owns the windows)
    against the time the join spends on that window's events: bounded, since a window is
    ``window_size`` predictions whatever the traffic, so it is a share of the join's work."""
    logged = WINDOW_COST.findall(run.log)
    if not logged:
        raise SystemExit("the monitor logged no window's drift cost")
    spent = [1000 * (float(tests) + float(rec)) for _, tests, rec, _ in logged]
    # A drifted window ops are notified of draws the per-column widgets; one of an episode
    # they already know of does not (refinery/monitor/notices.py). Its notices are logged
    # as kind:notice, comma-separated.
    kinds = [
        "stable"
        if cols == "-"
        else "drifted, notified"
        if any(n.partition(":")[2] in FIRING for n in notice.split(","))
        else "drifted"
        for cols, _, _, notice in logged
    ]
    split = "; ".join(
        f"{kind} {len(ms)}: median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms"
        for kind in ("stable", "drifted", "drifted, notified")
        if (ms := [c for c, k in zip(spent, kinds, strict=True) if k == kind])
    )
    tests_ms = statistics.median(1000 * float(tests) for _, tests, _, _ in logged)
    join_ms = 1000 * events_per_window / run.joined
    print(
        f"drift per window: median {statistics.median(spent):.0f} ms (tests {tests_ms:.0f} ms) "
        f"vs {join_ms:.0f} ms of join for its {events_per_window:.0f} events; {split}"
    )
    return Figure(
        "monitor: drift per window (tests + record), median",
        statistics.median(spent),
        f"the join's time for a window's {events_per_window:.0f} events",
        join_ms,
        "ms",
        note=f"{len(logged)} windows, tests alone median {tests_ms:.0f} ms; {split}",
    )


def cpu_note(run: MonitorRun) -> str:
    spent = ", ".join(f"{name} {s:.2f}" for name, s in run.cpu_per_k.items())
    return f"CPU s per 1,000 events: {spent}; {run.busy:.0%} of the cores busy"


def _example_stamps(settings: Settings, examples: int) -> list[int]:
    """The broker timestamps (ms) of the first ``examples`` records on the examples topic."""
    consumer = KafkaConsumer(
        Topics.from_settings(settings).name(Stream.EXAMPLES),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=30_000,
    )
    stamps: list[int] = []
    try:
        for record in consumer:
            stamps.append(record.timestamp)
            if len(stamps) >= examples:
                break
    finally:
        consumer.close()
    return stamps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stable-windows", type=int, default=10)
    parser.add_argument("--shifted-windows", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.3, help="new-domain share after onset")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="the monitor measured again with its join split between this many workers",
    )
    parser.add_argument("--baseline-turns", type=int, default=3, help="bare faust runs (median)")
    parser.add_argument(
        "--partitions", type=int, default=4, help="of every topic read (4: 1, 2 or 4 workers)"
    )
    args = parser.parse_args()

    run = uuid.uuid4().hex[:6]
    base = get_settings()
    settings = base.model_copy(
        update={
            "topic_prefix": f"bench-{run}",
            "monitor_app_id": f"bench-monitor-{run}",
            "topic_partitions": args.partitions,
        }
    )
    # Each monitor run reads the same events from topics of its own, written once it is warm.
    monitor_runs = {
        n: settings.model_copy(
            update={
                "topic_prefix": f"bench-{run}-monitor{n}",
                "monitor_app_id": f"bench-m{n}-{run}",
            }
        )
        for n in sorted({1, args.workers})
    }
    spec = load_task(settings.task_file).drift
    for topics_of in (settings, *monitor_runs.values()):
        ensure_topics(topics_of)
    stable = spec.reference_size + args.stable_windows * spec.window_size
    shifted = args.shifted_windows * spec.window_size
    records = traffic_records(settings, stable, shifted, args.share)
    total = produce(settings, records)
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
        # It counts the events in about a second: one run's rate moved by 1.7x between runs.
        turns = [bare_faust_rate(settings, total) for _ in range(args.baseline_turns)]
        bare_faust = statistics.median(turns)
        measured = {
            n: monitor_rate(
                monitor_settings,
                partial(produce, monitor_settings, records),
                examples,
                expected_windows,
                workers=n,
            )
            for n, monitor_settings in monitor_runs.items()
        }
    one = measured[1]
    print("| reader | events/s | vs bare faust |\n|---|---|---|")
    print(f"| plain aiokafka consumer, counting | {counted:,.0f} | {counted / bare_faust:.2f}x |")
    print(f"| bare faust worker, JSON and count | {bare_faust:,.0f} | 1.00x |")
    print(f"bare faust runs: {', '.join(f'{rate:,.0f}' for rate in turns)} events/s (median)")
    figures = [
        Figure(
            "bare faust worker (JSON, count)",
            bare_faust,
            "plain aiokafka consumer",
            counted,
            "events/s",
            note=f"median of {len(turns)} runs: "
            + ", ".join(f"{rate:,.0f}" for rate in turns)
            + " events/s",
        )
    ]
    for name, rate, note in (
        ("join, to the last example", one.joined, cpu_note(one)),
        ("+ windows and drift tests", one.windowed, ""),
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
                note=note,
            )
        )
    print(f"1 worker: {cpu_note(one)}")
    if args.workers > 1:
        split = measured[args.workers]
        print(f"{args.workers} workers: {cpu_note(split)}")
        print(
            f"| monitor, join split between {args.workers} workers | {split.joined:,.0f} | "
            f"{split.joined / bare_faust:.4f}x |"
        )
        figures.append(
            Figure(
                f"monitor, join split between {args.workers} workers, to the last example",
                split.joined,
                "the same with 1 worker",
                one.joined,
                "events/s",
                note=f"one consumer group, {args.partitions} partitions; {cpu_note(split)}",
            )
        )
    figures.append(window_cost(one, total * spec.window_size / predictions))
    windows = [(int(m[0]), m[2]) for m in WINDOW_LINE.findall(one.log)]
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
        f"{predictions} predictions and {examples} ratings written to fresh topics "
        f"({args.partitions} partitions) first, then "
        "read by each reader in turn from the start; a rate is records over the time from "
        "the first record read to the last (the monitor: to its last example written, and "
        f"to its last window closed; window {spec.window_size}, Evidently on each; the same "
        "events written to topics of its own once it had warmed up, the producer beside it).",
    )


if __name__ == "__main__":
    main()
