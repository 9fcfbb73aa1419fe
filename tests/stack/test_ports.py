"""Listener ports stay out of the ephemeral range; a taken port names its holder."""

from __future__ import annotations

import gc
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from refinery.common.exceptions import ProcessError
from refinery.common.settings import Settings
from refinery.stack.ports import ensure_free, ephemeral_range, listener_ports
from refinery.stack.process import ManagedProcess
from tests.ports import ALL_BLOCKS, ports


def _outside_range(found: dict[str, int]) -> dict[str, int]:
    low, high = ephemeral_range()
    return {what: port for what, port in found.items() if low <= port <= high}


@pytest.mark.parametrize("nodes", [1, 3])
def test_default_stack_listens_below_the_ephemeral_range(nodes: int) -> None:
    settings = Settings(kafka_nodes=nodes)
    assert _outside_range(listener_ports(settings)) == {}


@pytest.mark.parametrize("nodes", [1, 3])
def test_every_test_stack_listens_below_the_ephemeral_range_on_ports_of_its_own(
    nodes: int,
) -> None:
    seen: dict[int, str] = {}
    for block in ALL_BLOCKS:
        found = listener_ports(Settings(**ports(block), kafka_nodes=nodes))
        assert _outside_range(found) == {}, f"block {block}"
        for what, port in found.items():
            assert port not in seen, f"{port}: {what} of block {block} and {seen[port]}"
            seen[port] = f"{what} of block {block}"


def test_a_taken_port_names_the_process_that_holds_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ProcessError) as info:
            ensure_free("kafka-1", {"controller": port})
    message = str(info.value)
    assert f"127.0.0.1:{port} (controller) is already in use by pid {os.getpid()}" in message
    assert "pytest" in message or sys.executable in message


def test_a_process_does_not_start_on_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = _sleeper(tmp_path, ports={"server": port})
        with pytest.raises(ProcessError, match=f"pid {os.getpid()}"):
            proc.spawn()
    assert proc.pid() is None


def _sleeper(tmp_path: Path, ports: dict[str, int] | None = None) -> ManagedProcess:
    """A leader with a child, like vLLM's API server and its engine core."""
    return ManagedProcess(
        name="sleeper",
        argv=["sh", "-c", "sleep 300 & wait"],
        run_dir=tmp_path / "run",
        log_dir=tmp_path / "log",
        health=lambda: True,
        ports=ports or {},
        stop_timeout_s=5,
    )


def _started_with_child(proc: ManagedProcess) -> int:
    proc.start()
    pgid = proc.pid()
    assert pgid is not None
    deadline = time.monotonic() + 10
    while len(_children_of_group(pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return pgid


def _children_of_group(pgid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(proc.name))
    return found


def test_stop_ends_the_children_of_a_leader_that_was_killed_alone(tmp_path: Path) -> None:
    proc = _sleeper(tmp_path)
    pgid = _started_with_child(proc)
    proc.kill_leader()
    assert proc.pid() is None
    assert _children_of_group(pgid), "the child should outlive its leader"
    assert proc.stop(), "stop must see the orphaned child as still running"
    assert _children_of_group(pgid) == []
    assert not proc.stop()


def test_a_restart_ends_the_orphans_of_the_last_instance(tmp_path: Path) -> None:
    proc = _sleeper(tmp_path)
    old = _started_with_child(proc)
    proc.kill_leader()
    proc.start()
    try:
        assert _children_of_group(old) == []
    finally:
        proc.stop()


def test_a_process_stopped_through_another_handle_is_reaped(tmp_path: Path) -> None:
    """A fixture's Stack may be dropped while its processes run on, and another handle stop
    them: the exit status is collected all the same (no zombie), and the dropped handle
    leaves nothing for the garbage collector to warn about."""
    started = _sleeper(tmp_path)
    pid = _started_with_child(started)
    del started
    gc.collect()  # under the suite's warnings-as-errors: a running, unreaped Popen warns here
    assert _sleeper(tmp_path).stop()
    state = Path(f"/proc/{pid}/stat")
    assert not state.exists(), f"pid {pid} left as {state.read_text().split()[2]}"
