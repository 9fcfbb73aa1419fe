"""A monitor worker's first start on a busy cluster: does it join with its own topics?

    python -m bench.first_start                # 6 first starts, churn and 2 busy cores
    python -m bench.first_start --starts 10 --hogs 0

Kafka alone starts under a temp dir (ports from --port-base). Meanwhile one process keeps
the controller busy (creates and deletes 20 topics of 6 partitions, then rests a second,
over and over) and --hogs processes spin on the CPUs. Each start is a new worker under a
new app id, so each is a first start: faust's own topics (changelogs, internal topics,
the leader topic) do not exist yet. A start counts as hit when faust assigned without them
("Ignoring missing topic", then PartitionsMismatch on every event until its metadata
refresh minutes later); refinery/monitor/faust_app.py makes them before the worker joins.
Measured before that fix (commit 6ffae57): 6 of 6 starts hit; after it 0 of 6
(docs/RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from bench.harness import bench_settings
from refinery.stack.monitor import monitor_process
from refinery.stack.stack import Stack

HIT = ("Ignoring missing topic", "PartitionsMismatch")


def churn(bootstrap: str) -> None:
    """The controller kept busy: topics created and deleted in a loop."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    round_ = 0
    while True:
        names = [f"churn-{round_}-{i}" for i in range(20)]
        round_ += 1
        admin.create_topics([NewTopic(name, 6, 1) for name in names])
        admin.delete_topics(names)
        time.sleep(1.0)


def spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=6)
    parser.add_argument("--hogs", type=int, default=2, help="processes spinning on the CPUs")
    parser.add_argument("--port-base", type=int, default=31500)
    args = parser.parse_args()
    var_dir = Path(tempfile.mkdtemp(prefix="refinery-first-start-"))
    settings = bench_settings(var_dir, args.port_base, nodes=1)
    stack = Stack(settings)
    stack.up(("kafka",))
    load = [multiprocessing.Process(target=churn, args=(settings.kafka_bootstrap,), daemon=True)]
    load += [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.hogs)]
    for proc in load:
        proc.start()
    hits = 0
    try:
        time.sleep(5)  # the churn under way
        for i in range(args.starts):
            own = settings.model_copy(update={"monitor_app_id": f"first-{uuid.uuid4().hex[:8]}"})
            worker = monitor_process(own, name=f"monitor-{i}")
            started = time.monotonic()
            worker.start()  # returns once faust logs that the worker is ready
            ready_s = time.monotonic() - started
            time.sleep(2)  # an assignment without its topics warns right after
            hit = any(sign in worker.log_file.read_text(errors="replace") for sign in HIT)
            hits += hit
            outcome = "HIT" if hit else "joined with its topics"
            print(f"start {i}: ready in {ready_s:.1f} s, {outcome}", flush=True)
            worker.stop()
    finally:
        for proc in load:
            proc.terminate()
        stack.down()
    print(f"{hits} of {args.starts} first starts joined without their own topics")


if __name__ == "__main__":
    main()
