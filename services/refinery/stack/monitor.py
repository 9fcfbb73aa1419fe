"""The drift monitor: ``faust worker`` processes (one per name; they share a consumer group)."""

from __future__ import annotations

import sys

from refinery.common.settings import Settings
from refinery.stack.process import ManagedProcess, logged_since_last_start

READY = "[^Worker]: Ready"


def monitor_process(
    settings: Settings, name: str = "monitor", metrics_port: int | None = None
) -> ManagedProcess:
    """A worker named ``name`` (its own table state under var/monitor/<name>), serving its
    metrics on ``metrics_port`` (default: the settings' port)."""
    data_dir = (settings.var_dir / "monitor" / name).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(
        name=name,
        argv=[
            sys.executable,
            "-m",
            "faust",
            "-A",
            "refinery.monitor.app",
            "--datadir",
            str(data_dir),
            "worker",
            "--without-web",
            "-l",
            "info",
        ],
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        health=lambda: False,
        # One OpenMP thread: the drift report's t-SNE (scikit-learn) and vLLM's CPU workers
        # otherwise spin against each other on a small host.
        env={
            **settings.process_env(),
            "OMP_NUM_THREADS": "1",
            "REFINERY_MONITOR_METRICS_PORT": str(
                settings.monitor_metrics_port if metrics_port is None else metrics_port
            ),
        },
        startup_timeout_s=180,
    )
    proc.health = lambda: logged_since_last_start(proc, READY)
    return proc
