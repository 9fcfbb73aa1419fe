"""The retrainer process: ``python -m refinery.retrainer`` (a consumer of triggers)."""

from __future__ import annotations

import sys

from refinery.common.settings import Settings
from refinery.retrainer.service import READY
from refinery.stack.process import ManagedProcess, logged_since_last_start


def retrainer_process(settings: Settings, name: str = "retrainer") -> ManagedProcess:
    proc = ManagedProcess(
        name=name,
        argv=[sys.executable, "-m", "refinery.retrainer"],
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        health=lambda: False,
        env=settings.process_env(),
        startup_timeout_s=180,
        stop_timeout_s=10,  # a run in progress resumes from its checkpoint on the next start
    )
    proc.health = lambda: logged_since_last_start(proc, READY)
    return proc
