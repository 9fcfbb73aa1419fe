"""The retrainer process: ``python -m services.retrainer`` (a consumer of triggers)."""

from __future__ import annotations

import sys

from services.common.settings import REPO_ROOT, Settings
from services.retrainer.service import READY
from services.stack.process import ManagedProcess, logged_since_last_start


def retrainer_process(settings: Settings, name: str = "retrainer") -> ManagedProcess:
    proc = ManagedProcess(
        name=name,
        argv=[sys.executable, "-m", "services.retrainer"],
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        health=lambda: False,
        env={**settings.to_env(), "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
        startup_timeout_s=180,
        stop_timeout_s=10,  # a run in progress resumes from its checkpoint on the next start
    )
    proc.health = lambda: logged_since_last_start(proc, READY)
    return proc
