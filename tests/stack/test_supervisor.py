"""The supervisor starts a killed process again, records it, tells ops, and leaves a stop
alone."""

from __future__ import annotations

import time

from refinery.common.events import DecisionEvent
from refinery.common.settings import Settings
from refinery.common.topics import Stream
from refinery.stack.monitor import monitor_process
from refinery.stack.stack import Stack
from refinery.stack.supervisor import read_restarts, supervisor_process
from tests.conftest import run_cli
from tests.inference.helpers import read_events


def _wait(condition, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_a_killed_monitor_is_restarted_and_a_stopped_one_is_not(
    stack: Stack, kafka_stack: Settings
) -> None:
    stack.up(("monitor",))
    supervisor = supervisor_process(kafka_stack)
    supervisor.start()
    monitor = monitor_process(kafka_stack)
    before = len([r for r in read_restarts(kafka_stack) if r.component == "monitor"])
    try:
        killed = monitor.pid()
        monitor.kill()

        def restarted() -> bool:  # healthy, and the supervisor has recorded it
            done = [r for r in read_restarts(kafka_stack) if r.component == "monitor"]
            return len(done) > before and monitor.pid() not in (None, killed)

        assert _wait(restarted, 180), supervisor.log_tail()
        assert monitor.is_healthy()
        mine = [r for r in read_restarts(kafka_stack) if r.component == "monitor"][before:]
        assert [(r.attempt, r.ok) for r in mine] == [(1, True)]
        told = read_events(kafka_stack, Stream.DECISIONS, {"monitor"}, "subject", timeout_s=30)
        assert any(
            isinstance(d, DecisionEvent) and d.action == "process_restarted" for d in told
        ), told
        status = run_cli(kafka_stack, "status")
        assert f"restarts monitor: {before + 1}" in status.stdout
        assert "supervisor healthy" in status.stdout

        stack.down(("monitor",))  # on purpose: the supervisor must not undo it
        time.sleep(6)
        assert monitor.pid() is None
    finally:
        supervisor.stop()
        stack.up(("monitor",))
