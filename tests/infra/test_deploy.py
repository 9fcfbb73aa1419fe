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
from refinery.deployer.service import SLOTS
from refinery.stack.vllm import merged_url, slot_url
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
MERGED = ["mergedServing.enabled=true", "mergedServing.port=9120"]


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


@pytest.mark.parametrize(
    "sets", [[], EXTERNAL, MERGED], ids=["defaults", "external-services", "merged-serving"]
)
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


def _setting_keys(env: dict[str, Any]) -> list[str]:
    """The keys of ``env`` that name no Refinery setting (typos the code would ignore)."""
    return [
        key
        for key in env
        if key.startswith("REFINERY_")
        and key.removeprefix("REFINERY_").lower() not in Settings.model_fields
    ]


def test_merged_serving_renders_a_deployer_the_gateways_reach_through_its_service(
    tmp_path: Path,
) -> None:
    _, plain = _render(tmp_path, [])
    assert not [d for d in plain if "deployer" in d["metadata"]["name"]]  # opt in
    _, docs = _render(tmp_path, MERGED)
    (service,) = [d for d in docs if d["kind"] == "Service" and "deployer" in d["metadata"]["name"]]
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and "deployer" in d["metadata"]["name"]
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert _setting_keys(env) == []
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    settings = Settings(
        **{k.removeprefix("REFINERY_").lower(): v for k, v in {**config["data"], **env}.items()}
    )
    # The deployer tags its slots with URLs behind its Service, on the ports it serves on.
    name = service["metadata"]["name"]
    assert (
        [merged_url(settings, slot) for slot in SLOTS]
        == [f"http://{name}:{p['port']}" for p in service["spec"]["ports"]]
        == ["http://rel-deployer:9120", "http://rel-deployer:9121"]
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert [ports[p["targetPort"]] for p in service["spec"]["ports"]] == [9120, 9121]
    # ...and binds them where the Service reaches them, looking at them on its own host.
    assert settings.vllm_host == "0.0.0.0" and slot_url(settings, 0) == "http://127.0.0.1:9120"
    assert settings.vllm_backend == "gpu" and "nvidia.com/gpu" in container["resources"]["limits"]
    assert container["command"] == ["python3", "-m", "refinery.deployer"]


def test_the_deployer_image_installs_the_locked_versions() -> None:
    """The deployer's image adds to vLLM's what the merge and the registry need, pinned as
    the tested environment (requirements.lock) pins them."""
    dockerfile = (REPO_ROOT / "infra" / "compose" / "vllm.Dockerfile").read_text()
    (install,) = [
        line
        for line in dockerfile.splitlines()
        if line.startswith("RUN pip install --no-cache-dir peft")
    ]
    pins = [word for word in install.split() if "==" in word]
    locked = set((REPO_ROOT / "requirements.lock").read_text().split())
    assert pins and all(pin in locked for pin in pins), pins


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
    # Merged serving is a profile: the deployer joins when it is asked for.
    merged = subprocess.run(
        check, capture_output=True, text=True, env={**env, "COMPOSE_PROFILES": "merged"}, timeout=60
    )
    assert merged.returncode == 0, merged.stderr
    assert sorted({*done.stdout.split(), "deployer"}) == merged.stdout.split()
    services = yaml.safe_load(compose.read_text())["services"]
    # Each image of a Dockerfile with several stages is built from the stage it names.
    assert all("target" in s["build"] for s in services.values() if "build" in s)
    deployer = services["deployer"]
    assert _setting_keys(deployer["environment"]) == []
    assert deployer["environment"]["REFINERY_VLLM_MERGED_HOST"] == "deployer"
    # A required secret left unset is refused, as `docker compose` refuses it.
    del env["POSTGRES_PASSWORD"]
    refused = subprocess.run(check, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr
