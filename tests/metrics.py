"""Scraping a process's Prometheus metrics in tests, and promtool's lint of them."""

from __future__ import annotations

import subprocess
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.toolchain import tool

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[str, Samples]:
    """The exposition text at ``url`` and its samples by (name, labels)."""
    text = httpx.get(url, timeout=10).raise_for_status().text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_until(url: str, ready: object, timeout_s: float = 60) -> tuple[str, Samples]:
    """Scrape until ``ready(samples)`` holds (metrics some loop updates on its own beat)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text, samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:  # type: ignore[operator]
            return text, samples
        time.sleep(1)


def promtool_lint(text: str) -> str:
    """``promtool check metrics`` of an exposition: its complaints ("" if none)."""
    checked = subprocess.run(
        [tool("PROMTOOL"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    return (checked.stdout + checked.stderr).strip() if checked.returncode else ""
