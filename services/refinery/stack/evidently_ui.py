"""The Evidently UI over the monitor's workspace: the drift dashboard and every window's
report (``evidently ui``, run through this module; alerts link to their report here)."""

from __future__ import annotations

import logging
import secrets
import sys
import time
from json import JSONDecodeError
from typing import Any

import httpx

from refinery.common.settings import IMPORT_ROOT, Settings
from refinery.stack.process import ManagedProcess


def evidently_ui_process(settings: Settings) -> ManagedProcess:
    workspace = settings.evidently_workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    url = settings.evidently_ui_url
    return ManagedProcess(
        name="evidently",
        argv=[
            sys.executable,
            "-m",
            "refinery.stack.evidently_ui",
            "ui",
            "--workspace",
            str(workspace),
            "--host",
            settings.evidently_ui_host,
            "--port",
            str(settings.evidently_ui_port),
        ],
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        ports={"evidently ui": settings.evidently_ui_port},
        health=lambda: httpx.get(f"{url}/api/projects", timeout=2.0).status_code == 200,
        env={
            "PYTHONPATH": str(IMPORT_ROOT),  # this module runs it: a checkout needs no install
            "DO_NOT_TRACK": "1",  # no usage telemetry (and nothing leaves the host)
            # Only the monitor writes the workspace (to its files): a secret nobody holds
            # refuses writes through the UI's HTTP API.
            "EVIDENTLY_SECRET": secrets.token_urlsafe(32),
        },
        startup_timeout_s=120,
    )


def tolerate_half_written_projects() -> None:
    """Evidently's workspace watcher (0.7) reads a project's ``metadata.json`` on the file's
    created or modified event, which can come while the monitor is still writing it: the
    JSONDecodeError ends the watcher's thread, and the UI shows nothing new from then on (a
    closed-loop run, 2026-12-01). Read it again shortly after instead; should it still be
    cut short, the write's own later event reads it whole."""
    from evidently.ui.service.storage.local import watcher

    read = watcher.WorkspaceDirHandler.on_project_event

    def on_project_event(self: Any, event: Any) -> None:
        for _ in range(20):
            try:
                read(self, event)
                return
            except JSONDecodeError:
                time.sleep(0.05)
        logging.getLogger(__name__).warning("%s: still half-written", event.src_path)

    watcher.WorkspaceDirHandler.on_project_event = on_project_event


if __name__ == "__main__":
    tolerate_half_written_projects()
    from evidently.cli import app

    app()
