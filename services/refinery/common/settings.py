"""The one reader of the environment: addresses, paths and secrets (prefix ``REFINERY_``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from refinery.common.exceptions import ConfigError
from refinery.common.resources import packaged

# The package's folder; its parent is what a child process puts on PYTHONPATH (``services/``
# in a checkout, site-packages when installed).
PACKAGE_DIR = Path(__file__).resolve().parents[1]
IMPORT_ROOT = PACKAGE_DIR.parent
# The checkout the code runs from: the Makefile, infra/, bench/ and tests/ live there. An
# installed package has none, so what the code writes goes to a per-user folder instead.
REPO_ROOT = IMPORT_ROOT.parent
IN_CHECKOUT = IMPORT_ROOT.name == "services" and (REPO_ROOT / "pyproject.toml").is_file()


def _default_var_dir() -> Path:
    """``var/`` in a checkout (git-ignored); ``$XDG_DATA_HOME/refinery`` when installed."""
    if IN_CHECKOUT:
        return REPO_ROOT / "var"
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "refinery"


def _env_files() -> tuple[Path, ...]:
    if IN_CHECKOUT:
        return (REPO_ROOT / ".env", REPO_ROOT / "var" / "toolchain.env")
    return (Path(".env"),)


class Settings(BaseSettings):
    """Where things run and live. Defaults run offline on one laptop.

    ``var/toolchain.env`` is written by ``infra/setup.sh`` (paths of the cached
    vLLM venv and Kafka jars), so a bare ``refinery up`` finds what ``make`` built.
    """

    model_config = SettingsConfigDict(
        env_prefix="REFINERY_",
        env_file=_env_files(),
        extra="ignore",
    )

    # Where state, logs, models and secrets go (git-ignored in a checkout).
    var_dir: Path = Field(default_factory=_default_var_dir)
    # The task file: task kind, template, labels, training and gating thresholds (the
    # support-triage example that ships with the package unless set).
    task_file: Path = Field(default_factory=lambda: packaged("refinery.yaml"))

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    # The address the brokers `refinery up` starts advertise to clients (and bind, unless
    # kafka_bind_host says otherwise: 0.0.0.0 for every interface). Loopback by default;
    # another host's services reach the brokers once this is an address they can route to.
    kafka_host: str = "127.0.0.1"
    kafka_bind_host: str | None = None
    # Folder of broker jars resolved from Maven Central by infra/kafka/fetch.sh.
    kafka_libs: Path | None = None
    kafka_java: str = "java"
    # 1 for development; 3 (replication 3, min ISR 2) for the fault tests.
    kafka_nodes: int = 1
    # Broker port of the first node; node i listens on kafka_port + i - 1.
    kafka_port: int = 9092
    # KRaft controller port of the first node (node i: + i - 1). Keep every listener port
    # below the kernel's ephemeral range (32768+ on Linux), where outgoing connections
    # take their local ports at random.
    kafka_controller_port: int = 19092
    topic_prefix: str = "refinery"
    topic_partitions: int = 3
    # None: 1 on a single node, 3 on the three-node cluster.
    topic_replication: int | None = None
    # Raw traffic (predictions, feedback) is kept this long: the monitor and the join read it
    # within minutes, so a week leaves room for outages and replays.
    traffic_retention_hours: int = 7 * 24
    # Alerts, triggers, model events and dead letters: the record ops and audits read.
    ops_retention_hours: int = 90 * 24
    # The examples topic is the training corpus: compacted by feedback id and never deleted.

    # MLflow
    mlflow_uri: str = "http://127.0.0.1:5000"
    mlflow_host: str = "127.0.0.1"
    mlflow_port: int = 5000
    #: where the MLflow server keeps artifacts (default var/mlflow/artifacts); s3://... works
    mlflow_artifacts_destination: str | None = None
    #: MLflow's backend store: SQLite under var/mlflow (one laptop), or a PostgreSQL server
    #: the stack starts (var/postgres); mlflow_backend_uri names an existing database instead
    mlflow_backend: Literal["sqlite", "postgresql"] = "sqlite"
    mlflow_backend_uri: SecretStr | None = None
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5433
    postgres_bin_dir: Path | None = Field(
        default=None, description="PostgreSQL's binaries (infra/setup.sh writes it)"
    )
    registered_model: str = "refinery-model"
    experiment: str = "refinery"

    # vLLM
    vllm_python: Path | None = Field(
        default=None, description="python of the vLLM venv (infra/setup.sh writes it)"
    )
    vllm_backend: Literal["cpu", "gpu"] = "cpu"
    vllm_host: str = "127.0.0.1"
    vllm_port: int = 8100
    #: vLLM servers the stack starts, on vllm_port, vllm_port + 1, ...
    vllm_replicas: int = Field(default=1, ge=1, le=8)
    #: the vLLM base urls the gateway balances over, comma-separated (default: the replicas
    #: above); on several hosts or behind a service name, list them here
    vllm_upstreams: str | None = None
    vllm_max_model_len: int = 512
    vllm_max_loras: int = 4
    vllm_max_lora_rank: int = 16
    #: how long vLLM may take to fetch an adapter from the registry and load it
    adapter_load_timeout_s: float = 120.0
    vllm_kvcache_gib: int = 1
    #: seconds vLLM's engine core and worker spin after a message before they sleep on a
    #: socket (refinery/vllm_plugin/spin.py). None: 0.01 on the CPU backend (vLLM's own
    #: 1 s spun ~1.1 cores at 5 requests/s: 220 ms of CPU a request against 35-40 ms, at
    #: the same latency), vLLM's own on a GPU, whose host has cores to spare
    vllm_spin_s: float | None = Field(default=None, ge=0)
    #: vLLM's share of GPU memory (weights + KV cache): the rest is the retrainer's when it
    #: trains on the same GPU (REFINERY_VLLM_BACKEND=gpu only)
    vllm_gpu_memory_utilization: float = Field(default=0.5, gt=0.05, le=0.95)
    # The name vLLM serves the base model under; adapters get <model>-v<version>.
    served_model_name: str = "refinery-base"
    #: serve the champion at base speed: a deployer (refinery/deployer) merges its adapter
    #: into the base weights and runs them on a vLLM server of their own, blue/green on
    #: vllm_merged_port and the port after it; the gateway sends champion traffic there once
    #: it answers, and runtime LoRA on the replicas above still serves canaries and stands in
    #: whenever the merged server does not answer
    serve_merged: bool = False
    vllm_merged_port: int = 8120
    #: the host gateways reach the merged servers at, as the deployer tags it (the
    #: deployer's Service in a cluster, where the servers bind vllm_host 0.0.0.0); None:
    #: vllm_host
    vllm_merged_host: str | None = None
    #: VLLM_CPU_OMP_THREADS_BIND of the merged servers (CPU only): vLLM's "auto" pins them
    #: to the same cores as the replicas (idle but for canaries once a merged server takes
    #: the champion's traffic); on a host with cores to spare, give them their own ("4-7").
    #: Unpinned ("nobind") its threads fought its own API server here: 4-token answers at
    #: p50 52 ms, p99 424 ms, against 21 and 65 ms pinned (bench/gateway.py)
    vllm_merged_cpu_bind: str = "auto"
    #: how long a retired merged server keeps answering after its version lost the
    #: champion (gateways look again every route_reconcile_s)
    merged_drain_s: float = Field(default=30.0, ge=0)

    # Gateway (refinery/inference)
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    #: gateways the stack starts side by side, on gateway_port, gateway_port + 1, ...;
    #: with more than one, nginx in front of them on balancer_port (stack/balancer.py)
    gateway_replicas: int = Field(default=1, ge=1, le=8)
    balancer_port: int = 8090
    nginx_path: Path | None = None
    # API keys as "KEY:scope+scope,KEY2:admin"; scopes are inference, feedback, admin.
    api_keys: SecretStr | None = None
    # A file of "KEY scope+scope" lines; default var/secrets/api-keys.
    api_keys_file: Path | None = None
    # Only for local experiments: every request is admin.
    auth_disabled: bool = False
    # HMAC key that signs prediction ids; `refinery up` writes var/secrets/signing-key.
    signing_secret: SecretStr | None = None
    max_body_bytes: int = 256 * 1024
    # Predictions waiting on disk for Kafka; past this, completions answer 503.
    outbox_max_events: int = 200_000
    # How often the gateway checks its route against the registry's champion alias (and
    # that vLLM still has the champion's adapter); model events switch at once.
    route_reconcile_s: float = 10.0
    # How long feedback waits for acks=all before answering 503.
    feedback_ack_timeout_s: float = 5.0
    # An answer can be rated this long after it was given; older ids answer 404.
    feedback_max_age_s: float = 7 * 24 * 3600
    # Requests per second per API key (a token bucket of `rate_limit_burst`), over 429 with
    # Retry-After; 0 turns it off. Admin keys (the operator's own) are not limited.
    rate_limit_rps: float = 50.0
    rate_limit_burst: int = Field(default=100, ge=1)

    # Monitor (refinery/monitor)
    monitor_app_id: str = "refinery-monitor"
    # Prometheus metrics of the monitor and the retrainer (0: not served); the gateway's
    # are at its own /metrics.
    metrics_host: str = "127.0.0.1"
    monitor_metrics_port: int = 8020  # + worker index
    #: faust workers the stack starts; they share the topics' partitions
    monitor_workers: int = Field(default=1, ge=1, le=16)
    retrainer_metrics_port: int = 8030
    # The Evidently UI over the monitor's workspace (`refinery up` starts it); alerts link
    # to their window's report there.
    evidently_ui_host: str = "127.0.0.1"
    evidently_ui_port: int = 8010
    #: window snapshots (the UI's dashboard and reports) and drift report files kept, newest
    #: first: the UI holds every snapshot in memory (about 2.1 MB a drifted window's, 0.1 MB
    #: a stable one's), so this bounds it; the long trend is in the monitor's Prometheus metrics
    drift_snapshots_kept: int = Field(default=500, ge=1)
    # A prediction waits this long for feedback (and feedback for its prediction).
    join_ttl_s: float = 24 * 3600
    # Retrainer: torch threads on a CPU host (default: half the cores, at least one).
    retrainer_threads: int | None = None
    # Where drift alerts are POSTed as Slack-compatible JSON ({"text": ...}); none: no POST.
    alert_webhook_url: str | None = None
    # Ops hear of a drift episode when it opens or grows, again every this many minutes
    # while it lasts, and when this many stable windows in a row end it (monitor/notices.py).
    alert_repeat_minutes: float = Field(default=60.0, gt=0)
    alert_resolve_windows: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _every_node_bootstraps(self) -> Settings:
        """Unless given, clients bootstrap from every local node: with the first alone, a
        new client (a renewed producer, /readyz, a restarted consumer) cannot start while
        that one node is down, though the cluster serves."""
        if "kafka_bootstrap" not in self.model_fields_set:
            self.kafka_bootstrap = ",".join(
                f"{self.kafka_host}:{self.kafka_port + i}" for i in range(self.kafka_nodes)
            )
        return self

    @field_validator("kafka_nodes")
    @classmethod
    def _one_or_three(cls, value: int) -> int:
        if value not in (1, 3):
            raise ValueError("REFINERY_KAFKA_NODES must be 1 or 3")
        return value

    def to_env(self) -> dict[str, str]:
        """These settings as REFINERY_* variables, for the processes the stack starts."""
        env = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                env[f"REFINERY_{name.upper()}"] = str(value)
        return env

    def process_env(self) -> dict[str, str]:
        """The environment of a process the stack starts: these settings, and the folder
        that holds this package on its import path (so a checkout needs no install)."""
        return {**self.to_env(), "PYTHONPATH": str(IMPORT_ROOT)}

    @property
    def vllm_url(self) -> str:
        """The first vLLM replica (the one a single-replica stack runs)."""
        return self.vllm_urls[0]

    @property
    def vllm_urls(self) -> list[str]:
        if self.vllm_upstreams:
            return [u.strip().rstrip("/") for u in self.vllm_upstreams.split(",") if u.strip()]
        return [f"http://{self.vllm_host}:{self.vllm_port + i}" for i in range(self.vllm_replicas)]

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def models_dir(self) -> Path:
        return self.var_dir / "models"

    @property
    def secrets_dir(self) -> Path:
        return self.var_dir / "secrets"

    @property
    def signing_key_path(self) -> Path:
        """Where `refinery up` keeps the prediction-id signing key when none is set."""
        return self.secrets_dir / "signing-key"

    @property
    def admin_key_path(self) -> Path:
        """The local admin API key `refinery up` creates when no keys are configured."""
        return self.secrets_dir / "api-key"

    @property
    def api_keys_path(self) -> Path:
        return self.api_keys_file or self.secrets_dir / "api-keys"

    @property
    def evidently_ui_url(self) -> str:
        return f"http://{self.evidently_ui_host}:{self.evidently_ui_port}"

    @property
    def evidently_workspace(self) -> Path:
        return self.var_dir / "monitor" / "workspace"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def replication(self) -> int:
        return self.topic_replication or (3 if self.kafka_nodes == 3 else 1)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once; a bad value fails naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"REFINERY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
