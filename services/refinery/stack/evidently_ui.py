"""The Evidently UI over the monitor's workspace: the drift dashboard and every window's
report (``evidently ui``; alerts link to their report here)."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import httpx

from refinery.common.settings import Settings
from refinery.stack.process import ManagedProcess


def evidently_ui_process(settings: Settings) -> ManagedProcess:
    workspace = settings.evidently_workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    url = settings.evidently_ui_url
    return ManagedProcess(
        name="evidently",
        argv=[
            str(Path(sys.executable).parent / "evidently"),
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
            "DO_NOT_TRACK": "1",  # no usage telemetry (and nothing leaves the host)
            # Only the monitor writes the workspace (to its files): a secret nobody holds
            # refuses writes through the UI's HTTP API.
            "EVIDENTLY_SECRET": secrets.token_urlsafe(32),
        },
        startup_timeout_s=120,
    )
