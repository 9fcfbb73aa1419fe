"""Each closed window's record in the Evidently workspace, made in a process of its own.

A window's snapshot (Evidently's report over its feature frames), its run in the workspace,
and for a window that notifies ops the HTML copy of its report cost the worker most of its CPU time
(bench/monitor.py, profiled: about twice the join's, all of it holding the GIL in the
worker's threads), so the join read traffic at a fraction of its pace while windows closed.
Here they run in one child process beside the worker: the worker hands it the drift result
and the window (pickled: a few hundred rows) and gets back the alert to send, with its link.

One child: the workspace has one writer, and a notifying window's copy follows its record
(the child keeps the snapshot until then). A child that dies is started again on the next
call, and a call it died in is made once more; a child whose worker died (SIGKILL of the
worker alone) exits on its own within a second.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from evidently.core.report import Snapshot

from refinery.common.events import AlertEvent
from refinery.monitor.alerts import AlertPublisher, Recorded, Window
from refinery.monitor.drift import DriftResult
from refinery.monitor.report import WindowLabels, window_snapshot

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Reported:
    """A window as the workspace holds it, and its alerts (none: nothing drifted, nothing
    resolved)."""

    snapshot_id: str
    alerts: list[AlertEvent]


@dataclass(frozen=True)
class PublisherConfig:
    """What the child opens its AlertPublisher with (webhooks are the worker's own)."""

    reports_dir: Path
    workspace_dir: Path
    free_text: bool
    ui_url: str | None
    kept: int


class ReportProcess:
    """The child process that records windows; started on first use."""

    def __init__(self, config: PublisherConfig) -> None:
        self.config = config
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> int:
        """Start the child (if it is not running) and return its pid."""
        return await self._call(os.getpid)

    async def warm_up(self, result: DriftResult, scratch: Path) -> None:
        """Evidently's imports, the workspace, and one rendered report, before a window."""
        await self._call(_warm_up, result, scratch)

    async def record(self, result: DriftResult, window: Window) -> Reported:
        return await self._call(_record, result, window)

    async def save_copy(self, reported: Reported, window: Window) -> Path:
        """A notifying window's report as one HTML file (AlertPublisher.save_copy)."""
        return await self._call(_save_copy, reported.snapshot_id, window)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),  # never fork an event loop
                    initializer=_open,
                    initargs=(os.getpid(), self.config),
                )
            try:
                return await loop.run_in_executor(self._pool, fn, *args)
            except BrokenProcessPool:
                log.warning("the report process died (attempt %d); starting another", attempt)
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


# In the child process.
_publisher: AlertPublisher | None = None
_drifted: dict[str, Snapshot] = {}  # notifying windows' snapshots until their copy is written


def _open(parent: int, config: PublisherConfig) -> None:
    global _publisher
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()
    _publisher = AlertPublisher(
        config.reports_dir,
        config.workspace_dir,
        free_text=config.free_text,
        ui_url=config.ui_url,
        kept=config.kept,
    )


def _exit_without(parent: int) -> None:
    """End this process once its worker is gone (it would wait for work forever)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _publisher_here() -> AlertPublisher:
    assert _publisher is not None, "the report process was not opened"
    return _publisher


def _warm_up(result: DriftResult, scratch: Path) -> None:
    now = datetime.now(UTC)
    report = window_snapshot(result, WindowLabels("0", 0, now, now, None), None, detailed=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    report.save_html(str(scratch))


def _record(result: DriftResult, window: Window) -> Reported:
    publisher = _publisher_here()
    recorded = publisher.record(result, window)
    alerts = publisher.alerts(result, window, recorded)
    if alerts and window.detailed(bool(result.drifted_columns)):
        _drifted[recorded.snapshot_id] = recorded.snapshot
    return Reported(recorded.snapshot_id, alerts)


def _save_copy(snapshot_id: str, window: Window) -> Path:
    snapshot = _drifted.pop(snapshot_id)
    return _publisher_here().save_copy(Recorded(snapshot, snapshot_id), window)
