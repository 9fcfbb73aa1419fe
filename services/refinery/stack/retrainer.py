"""The retrainer process: ``python -m refinery.retrainer`` (a consumer of triggers)."""

from __future__ import annotations

from refinery.common.settings import Settings
from refinery.retrainer.service import READY
from refinery.stack.process import ManagedProcess, module_process


def retrainer_process(settings: Settings, name: str = "retrainer") -> ManagedProcess:
    # A run in progress at a stop resumes from its checkpoint on the next start.
    return module_process(
        name,
        "refinery.retrainer",
        READY,
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        env=settings.process_env(),
        startup_timeout_s=180,
    )
