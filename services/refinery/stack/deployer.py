"""The deployer process: ``python -m refinery.deployer`` (REFINERY_SERVE_MERGED=1 only)."""

from __future__ import annotations

from refinery.common.settings import Settings
from refinery.deployer.service import READY, SLOTS
from refinery.stack.process import ManagedProcess, module_process
from refinery.stack.vllm import merged_vllm_process


def deployer_process(settings: Settings) -> ManagedProcess:
    # A merge or start in progress at a stop is abandoned; the next start redoes it.
    return module_process(
        "deployer",
        "refinery.deployer",
        READY,
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        env=settings.process_env(),
    )


def merged_slots(settings: Settings) -> list[ManagedProcess]:
    """Handles of the blue/green servers the deployer starts (to stop them)."""
    return [merged_vllm_process(settings, slot) for slot in SLOTS]
