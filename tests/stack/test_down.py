"""``refinery down`` stops what ``up`` started, whatever the settings say now."""

from __future__ import annotations

from refinery.common.settings import Settings
from refinery.stack.monitor import monitor_process
from refinery.stack.ports import replica_name
from refinery.stack.stack import Stack


def test_down_stops_replicas_started_under_a_larger_count(
    stack: Stack, kafka_stack: Settings
) -> None:
    """Started with REFINERY_MONITOR_WORKERS=2, stopped from a shell without it: the second
    worker was left running (a user trial, 2026-12-01), reading on with nobody to stop it."""
    two = kafka_stack.model_copy(update={"monitor_workers": 2})
    workers = [
        monitor_process(two, replica_name("monitor", i), two.monitor_metrics_port + i)
        for i in range(2)
    ]
    was_running = stack.running("monitor")
    started = Stack(two)
    started.up(("monitor",))
    try:
        assert all(w.pid() is not None for w in workers)
        stopped = Stack(kafka_stack).down(("monitor",))  # monitor_workers=1 here
        assert sorted(stopped) == ["monitor", "monitor-2"]
        assert [w.pid() for w in workers] == [None, None]
    finally:
        started.down(("monitor",))  # reaps its children
        if was_running:
            stack.up(("monitor",))
