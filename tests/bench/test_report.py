"""docs/BENCHMARKS.md: targets judged on the measured ratio, and a run with a bench
missing writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.report import Figure


def test_a_target_is_judged_on_the_ratio_and_the_minimum() -> None:
    feedback = Figure("feedback", 400.0, "bare", 1000.0, "req/s", ">= 0.8")
    assert feedback.ratio == pytest.approx(0.4) and feedback.met is False
    latency = Figure("p50", 10.4, "vLLM", 10.0, "ms", "<= 1.05")
    assert latency.met is True
    fast_but_few = Figure("monitor", 9000.0, "faust", 10000.0, "events/s", ">= 0.5", 10_000)
    assert fast_but_few.met is False and fast_but_few.targets == ">= 0.5x, >= 10,000 events/s"
    assert Figure("plain", 1.0, "other", 2.0, "events/s").met is None


def test_the_report_needs_every_bench_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "figures_dir", lambda: tmp_path / "figures")
    monkeypatch.setattr(report, "REPORT", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr(report.sys, "argv", ["report"])
    slow = Figure("feedback", 400.0, "bare FastAPI", 1000.0, "req/s", ">= 0.8", note="acks=all")
    report.record("gateway", [slow], "the gateway's way")
    report.record("monitor", [Figure("join", 6000.0, "faust", 10000.0, "events/s")], "m")
    assert report.main() == 1 and not (tmp_path / "BENCHMARKS.md").exists()

    report.record("retrainer", [Figure("sft", 95.0, "plain", 100.0, "examples/s")], "r")
    assert report.main() == 1  # vllm_spin left none
    report.record("vllm_spin", [Figure("cpu", 36.0, "vLLM's own", 217.0, "ms")], "s")
    assert report.main() == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert (
        "| gateway | feedback | 400 req/s | bare FastAPI: 1,000 req/s | 0.400x | >= 0.8x | **no** |"
        in text
    )
    assert "- **retrainer** (`python -m bench.retrainer`): r" in text
    assert "- gateway, feedback: acks=all" in text

    monkeypatch.setattr(report.sys, "argv", ["report", "--clear"])
    assert report.main() == 0 and not list((tmp_path / "figures").iterdir())
