"""The deployer process: ``python -m refinery.deployer`` (REFINERY_SERVE_MERGED=1 only)."""

from __future__ import annotations

import sys

from refinery.common.settings import Settings
from refinery.deployer.service import READY, SLOTS
from refinery.stack.process import ManagedProcess, logged_since_last_start
from refinery.stack.vllm import merged_vllm_process


def deployer_process(settings: Settings) -> ManagedProcess:
    proc = ManagedProcess(
        name="deployer",
        argv=[sys.executable, "-m", "refinery.deployer"],
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        health=lambda: False,
        env=settings.process_env(),
        startup_timeout_s=60,
        stop_timeout_s=10,  # a merge or start in progress is abandoned; the next one redoes it
    )
    proc.health = lambda: logged_since_last_start(proc, READY)
    return proc


def merged_slots(settings: Settings) -> list[ManagedProcess]:
    """Handles of the blue/green servers the deployer starts (to stop them)."""
    return [merged_vllm_process(settings, slot) for slot in SLOTS]
