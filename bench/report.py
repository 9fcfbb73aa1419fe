"""``docs/BENCHMARKS.md`` from one ``make bench`` run.

Each bench records its figures as it ends (:func:`record`): a measured value next to the
baseline measured beside it in the same run, and the target for their ratio. ``python -m
bench.report`` then writes them out with the machine, the commit and the command, and
exits non-zero when a bench of the run left no figures (it failed, or a comparison was not
like for like and it stopped). A target is met or missed by the ratio as measured; nothing
in the report is typed in by hand.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from refinery.common.settings import REPO_ROOT, get_settings

BENCHES = ("gateway", "vllm_spin", "monitor", "retrainer")  # in the order `make bench` runs them
REPORT = REPO_ROOT / "docs" / "BENCHMARKS.md"
COMMAND = "make bench"
_COMPARE = {"<=": operator.le, ">=": operator.ge}


class NotLikeForLike(RuntimeError):
    """The two sides of a figure were not measured alike (another model answered, or a
    retraining ran beside one of them): their ratio says nothing."""


@dataclass(frozen=True)
class Figure:
    """One comparison: ``value`` against ``baseline``, both in ``unit``, side by side."""

    name: str  # what was measured, e.g. "POST /v1/feedback through the gateway"
    value: float
    baseline_name: str  # what it is compared with, e.g. "a bare FastAPI handler"
    baseline: float
    unit: str  # ms, req/s, events/s, examples/s
    target: str = ""  # on the ratio: "<= 1.05", ">= 0.8"; empty: reported, no target
    minimum: float | None = None  # and on the value itself, when the issue sets one
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        op, threshold = self.target.split()
        enough = self.minimum is None or self.value >= self.minimum
        return enough and bool(_COMPARE[op](self.ratio, float(threshold)))

    @property
    def targets(self) -> str:
        wanted = [f"{self.target}x"] if self.target else []
        if self.minimum is not None:
            wanted.append(f">= {_number(self.minimum)} {self.unit}")
        return ", ".join(wanted) or "-"


def figures_dir() -> Path:
    return get_settings().var_dir / "bench" / "figures"


def clear() -> None:
    """Forget an earlier run's figures (``make bench`` starts with this)."""
    for path in figures_dir().glob("*.json"):
        path.unlink()


def record(bench: str, figures: list[Figure], context: str) -> Path:
    """Keep ``bench``'s figures for the report; ``context`` says how they were measured."""
    path = figures_dir() / f"{bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"context": context, "figures": [asdict(f) for f in figures]}))
    return path


def _machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return (
        f"{os.cpu_count()} x {model}, {mem_kb / 2**20:.0f} GiB RAM, no GPU in use; "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _number(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def render(runs: dict[str, dict[str, object]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{COMMAND}` ({Path(__file__).relative_to(REPO_ROOT)}) on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC from commit `{_commit()}`; every figure is "
        "measured next to its baseline in the same run. Regenerate it rather than edit it.",
        "",
        f"Machine: {_machine()}.",
        "",
        "| bench | figure | value | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for bench, run in runs.items():
        for raw in run["figures"]:  # type: ignore[attr-defined]
            f = Figure(**raw)
            met = {None: "-", True: "yes", False: "**no**"}[f.met]
            lines.append(
                f"| {bench} | {f.name} | {_number(f.value)} {f.unit} | {f.baseline_name}: "
                f"{_number(f.baseline)} {f.unit} | {f.ratio:.3f}x | {f.targets} | {met} |"
            )
            if f.note:
                notes.append(f"- {bench}, {f.name}: {f.note}")
    lines += ["", "## How each was measured", ""]
    for bench, run in runs.items():
        lines.append(f"- **{bench}** (`python -m bench.{bench}`): {run['context']}")
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def main() -> int:
    if sys.argv[1:] == ["--clear"]:
        clear()
        return 0
    runs = {}
    missing = []
    for bench in BENCHES:
        path = figures_dir() / f"{bench}.json"
        if path.exists():
            runs[bench] = json.loads(path.read_text())
        else:
            missing.append(bench)
    if missing:
        print(
            f"no figures from {', '.join(missing)} in {figures_dir()}: that bench failed or "
            "stopped (see its output above); docs/BENCHMARKS.md is left as it was",
            file=sys.stderr,
        )
        return 1
    REPORT.write_text(render(runs))
    print(f"wrote {REPORT}")
    missed = [
        f"{bench}: {raw['name']}"
        for bench, run in runs.items()
        for raw in run["figures"]
        if Figure(**raw).met is False
    ]
    if missed:
        print("targets missed:\n  " + "\n  ".join(missed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
