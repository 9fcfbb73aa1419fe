"""The Prometheus rules and the Grafana dashboard ask only for series a process exports
(a renamed metric would leave a panel empty and an alert silent, with no error)."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry

from refinery.common.settings import REPO_ROOT
from refinery.inference.metrics import GatewayMetrics
from refinery.monitor.metrics import MonitorMetrics
from refinery.retrainer.metrics import RetrainerMetrics

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
SERIES = re.compile(r"\brefinery_[a-z_]+")


def exported(registry: CollectorRegistry) -> set[str]:
    return {
        family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]
    }


def test_every_refinery_series_asked_for_is_exported() -> None:
    names = set().union(
        *(exported(m().registry) for m in (GatewayMetrics, MonitorMetrics, RetrainerMetrics))
    )
    rules = (REPO_ROOT / "infra" / "prometheus" / "rules.yml").read_text()
    dashboard = json.loads(
        (REPO_ROOT / "infra" / "grafana" / "refinery-dashboard.json").read_text()
    )
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    asked = set(SERIES.findall(rules)) | {n for q in queries for n in SERIES.findall(q)}
    assert len(queries) >= 15 and "refinery_monitor_drift_score" in asked
    assert asked - names == set()
