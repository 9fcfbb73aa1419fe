"""The deployment files, checked offline: the Helm chart lints, renders resources that pass
Kubernetes' own schemas (kubernetes-validate --strict), names the topics and settings the
code uses; the Compose file loads as `docker compose` would load it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from refinery.common.kafka.admin import topic_configs
from refinery.common.settings import REPO_ROOT, Settings
from tests.toolchain import tool

CHART = REPO_ROOT / "infra" / "helm" / "refinery"
KUBERNETES = "1.31.0"
# Custom resources of the Strimzi operator: no schema ships with kubernetes-validate.
STRIMZI = {"Kafka", "KafkaNodePool", "KafkaTopic"}
# Values a cluster with an external database and an S3 store would set.
EXTERNAL = [
    "postgres.enabled=false",
    "postgres.externalUri=postgresql://mlflow:secret@db.example:5432/mlflow",
    "mlflow.artifactsDestination=s3://bucket/refinery",
    "mlflow.s3Secret=refinery-s3",
    "gateway.autoscaling.enabled=false",
    "vllm.replicas=3",
    "model.taskConfigMap=my-task",
    "secrets.existingSecret=my-secrets",
]


def _helm(*args: str) -> str:
    done = subprocess.run([str(tool("HELM")), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _render(tmp_path: Path, sets: list[str]) -> tuple[Path, list[dict[str, Any]]]:
    flags = [f for s in sets for f in ("--set", s)]
    text = _helm("template", "rel", str(CHART), "--kube-version", KUBERNETES, *flags)
    out = tmp_path / "rendered.yaml"
    out.write_text(text)
    return out, [doc for doc in yaml.safe_load_all(text) if doc]


def test_the_chart_lints() -> None:
    assert "0 chart(s) failed" in _helm("lint", "--strict", str(CHART))


@pytest.mark.parametrize("sets", [[], EXTERNAL], ids=["defaults", "external-services"])
def test_the_rendered_chart_passes_kubernetes_schemas_strictly(
    tmp_path: Path, sets: list[str]
) -> None:
    rendered, docs = _render(tmp_path, sets)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubernetes-validate"),
            "--kubernetes-version",
            KUBERNETES,
            "--strict",
            str(rendered),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    passed = [line for line in done.stdout.splitlines() if " passed for resource " in line]
    kinds = {doc["kind"] for doc in docs}
    assert len(passed) == sum(doc["kind"] not in STRIMZI for doc in docs) > 10
    assert {"Deployment", "StatefulSet", "Service", "Job", "ConfigMap"} <= kinds
    unknown = [line for line in done.stdout.splitlines() if "Couldn't find schema" in line]
    assert all(any(f"kind {k} " in line for k in STRIMZI) for line in unknown), unknown


def test_the_charts_topics_are_the_ones_refinery_creates(tmp_path: Path) -> None:
    _, docs = _render(tmp_path, [])
    topics = {d["spec"]["topicName"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    wanted = topic_configs(Settings(kafka_nodes=3, topic_partitions=6, topic_replication=3))
    assert set(topics) == set(wanted)
    for name, spec in topics.items():
        assert spec["partitions"] == 6 and spec["replicas"] == 3
        assert spec["config"] == wanted[name], name


def test_every_setting_the_chart_sets_is_one_refinery_reads(tmp_path: Path) -> None:
    _, docs = _render(tmp_path, EXTERNAL)
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    unknown = [
        key
        for key in config["data"]
        if key.removeprefix("REFINERY_").lower() not in Settings.model_fields
    ]
    assert unknown == []
    # The gateways balance over every vLLM replica, by the StatefulSet's stable names.
    settings = Settings(vllm_upstreams=config["data"]["REFINERY_VLLM_UPSTREAMS"])
    (vllm,) = [d for d in docs if d["kind"] == "StatefulSet" and "vllm" in d["metadata"]["name"]]
    name = vllm["metadata"]["name"]
    assert vllm["spec"]["replicas"] == 3
    assert settings.vllm_urls == [f"http://{name}-{i}.{name}:8000" for i in range(3)]


def test_the_compose_file_loads_as_docker_compose_loads_it() -> None:
    env = {
        **os.environ,
        "REFINERY_API_KEYS": "key:admin",
        "REFINERY_SIGNING_SECRET": "secret",
        "POSTGRES_PASSWORD": "pw",
    }
    compose = REPO_ROOT / "infra" / "compose" / "compose.yaml"
    check = [str(tool("COMPOSE_CHECK")), str(compose)]
    done = subprocess.run(check, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "bootstrap",
        "gateway",
        "kafka",
        "mlflow",
        "monitor",
        "postgres",
        "retrainer",
        "serving-base",
        "vllm",
    ]
    # A required secret left unset is refused, as `docker compose` refuses it.
    del env["POSTGRES_PASSWORD"]
    refused = subprocess.run(check, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr
