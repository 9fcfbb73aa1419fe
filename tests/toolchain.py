"""The tools ``make setup`` cached outside the clone (promtool, uv), as var/toolchain.env
records them."""

from __future__ import annotations

from pathlib import Path

from refinery.common.settings import REPO_ROOT


def tool(name: str) -> Path:
    """The path of a cached tool by its REFINERY_* name, e.g. ``tool("PROMTOOL")``."""
    env = dict(
        line.split("=", 1)
        for line in (REPO_ROOT / "var" / "toolchain.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return Path(env[f"REFINERY_{name}"])
