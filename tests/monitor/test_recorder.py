"""The windows' report process: a window recorded in the child and its copy after it, a
child that dies replaced, and no child left once its worker is gone."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from evidently.ui.workspace import Workspace

from refinery.common.settings import IMPORT_ROOT
from refinery.monitor.alerts import PROJECT_NAME
from refinery.monitor.drift import detect_drift
from refinery.monitor.recorder import PublisherConfig, ReportProcess
from tests.monitor.test_alerts import WINDOW
from tests.monitor.test_drift import rows


def config(tmp_path: Path) -> PublisherConfig:
    return PublisherConfig(tmp_path / "reports", tmp_path / "workspace", False, None, kept=50)


def test_windows_are_recorded_in_a_child_and_a_dead_child_is_replaced(tmp_path: Path) -> None:
    reference = rows("retail", 400, seed=1)
    shifted = detect_drift(reference, rows("smart_home", 200, seed=3), p_value=0.001)
    stable = detect_drift(reference, rows("retail", 200, seed=4), p_value=0.001)

    async def run() -> None:
        reports = ReportProcess(config(tmp_path))
        try:
            child = await reports.start()
            assert child != os.getpid()
            reported = await reports.record(shifted, WINDOW)
            [alert] = reported.alerts
            copy = await reports.save_copy(reported, WINDOW)
            assert alert.report_url == copy.resolve().as_uri()
            assert copy.stat().st_size > 10_000
            os.kill(child, signal.SIGKILL)  # as the OOM killer would
            again = await reports.record(stable, WINDOW)  # made once more, in a new child
            assert again.alerts == [] and again.snapshot_id != reported.snapshot_id
            assert await reports.start() != child
        finally:
            reports.close()

    asyncio.run(run())
    workspace = Workspace.create(str(tmp_path / "workspace"))
    [project] = workspace.search_project(PROJECT_NAME)
    assert len(workspace.list_runs(project.id)) == 2


def test_the_child_ends_when_its_worker_dies(tmp_path: Path) -> None:
    """A worker SIGKILLed alone (its group is not signalled) leaves no child behind."""
    script = """
import asyncio, os, sys
from pathlib import Path
from refinery.monitor.recorder import PublisherConfig, ReportProcess
folder = Path(sys.argv[1])
reports = ReportProcess(PublisherConfig(folder / "r", folder / "w", False, None, 5))
print(asyncio.run(reports.start()), flush=True)
os.kill(os.getpid(), 9)
"""
    env = {**os.environ, "PYTHONPATH": str(IMPORT_ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert worker.stdout is not None
    child = int(worker.stdout.readline())  # the child holds the pipe too: not read to its end
    assert worker.wait(timeout=60) == -signal.SIGKILL
    worker.stdout.close()
    deadline = time.monotonic() + 10
    while alive(child):
        assert time.monotonic() < deadline, f"the report process {child} outlived its worker"
        time.sleep(0.2)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
