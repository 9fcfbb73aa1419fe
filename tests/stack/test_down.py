"""``refinery down`` stops what ``up`` started, whatever the settings say now."""

from __future__ import annotations

import uuid
from pathlib import Path

from refinery.common.settings import Settings
from refinery.stack.monitor import monitor_process
from refinery.stack.ports import replica_name
from refinery.stack.stack import Stack


def test_down_stops_replicas_started_under_a_larger_count(
    kafka_stack: Settings, tmp_path: Path
) -> None:
    """Started with REFINERY_MONITOR_WORKERS=2, stopped from a shell without it: the second
    worker was left running (a user trial, 2026-12-01), reading on with nobody to stop it.
    A stack of its own on the session's Kafka (own folder, group and ports)."""
    two = kafka_stack.model_copy(
        update={
            "monitor_workers": 2,
            "var_dir": tmp_path / "var",
            "monitor_app_id": f"test-down-{uuid.uuid4().hex[:6]}",
            "monitor_metrics_port": kafka_stack.monitor_metrics_port + 40,
        }
    )
    workers = [
        monitor_process(two, replica_name("monitor", i), two.monitor_metrics_port + i)
        for i in range(2)
    ]
    started = Stack(two)
    started.up(("monitor",))
    try:
        assert all(w.pid() is not None for w in workers)
        one = two.model_copy(update={"monitor_workers": 1})
        assert sorted(Stack(one).down(("monitor",))) == ["monitor", "monitor-2"]
        assert [w.pid() for w in workers] == [None, None]
    finally:
        started.down(("monitor",))  # reaps its children
