"""CPU seconds spent by each process of the stack (its whole process group: vLLM's engine
and worker processes count as vLLM's), read from /proc, so a bench can say where the
time went while it measured a rate."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _groups(run_dir: Path) -> dict[int, str]:
    """Process group id -> process name, from the pid files ``refinery up`` writes (every
    managed process leads a group of its own)."""
    groups = {}
    for pid_file in run_dir.glob("*.pid"):
        try:
            groups[int(pid_file.read_text().strip())] = pid_file.stem
        except ValueError:
            continue
    return groups


def cpu_seconds(run_dir: Path) -> dict[str, float]:
    """User + system CPU seconds so far of each managed process group, by process name."""
    groups = _groups(run_dir)
    spent = dict.fromkeys(groups.values(), 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        # After the command: state, ppid, pgrp, ..., utime (field 14), stime (15).
        name = groups.get(int(fields[2]))
        if name is not None:
            spent[name] += (int(fields[11]) + int(fields[12])) / TICKS
    return spent


def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after.get(name, 0.0) - spent for name, spent in before.items()}
