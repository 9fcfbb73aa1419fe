"""The stack in dependency order: kafka → topics → mlflow → (bootstrap) → vllm → gateway →
monitor → retrainer."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from refinery.common.exceptions import RefineryError
from refinery.common.kafka.admin import consumer_lag, ensure_topics, wait_for_broker
from refinery.common.registry import CANARY_SHARE_TAG, ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.common.task import load_task
from refinery.stack.balancer import balancer_process, balancer_url
from refinery.stack.deployer import deployer_process, merged_slots
from refinery.stack.evidently_ui import evidently_ui_process
from refinery.stack.gateway import ensure_local_secrets, gateway_process
from refinery.stack.kafka import KafkaCluster
from refinery.stack.mlflow import mlflow_process
from refinery.stack.monitor import monitor_process
from refinery.stack.ports import in_ephemeral_range, listener_ports, replica_name
from refinery.stack.postgres import postgres_process
from refinery.stack.process import ManagedProcess
from refinery.stack.retrainer import retrainer_process
from refinery.stack.supervisor import (
    read_restarts,
    read_wanted,
    supervisor_process,
    write_wanted,
)
from refinery.stack.vllm import merged_url, vllm_process

log = logging.getLogger(__name__)

COMPONENTS = (
    "kafka",
    "mlflow",
    "vllm",
    "gateway",
    "deployer",
    "monitor",
    "evidently",
    "retrainer",
)


def _upper_bound(field: str) -> int:
    return next(m.le for m in Settings.model_fields[field].metadata if hasattr(m, "le"))


# What `down` looks for: as many replicas of each as the settings allow.
_MOST_REPLICAS = {
    f: _upper_bound(f) for f in ("vllm_replicas", "gateway_replicas", "monitor_workers")
}


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int | None
    healthy: bool
    address: str
    log_file: str


class Stack:
    """Starts, stops and reports on the processes; ``up`` is idempotent.

    It keeps the handles of what it started, so ``down`` reaps its own children; another
    Stack (another ``refinery`` command) finds running processes by their pid files.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._started: dict[str, ManagedProcess] = {}

    def _keep(self, proc: ManagedProcess) -> ManagedProcess:
        return self._started.setdefault(proc.name, proc)

    # -- the parts ---------------------------------------------------------------------
    def kafka(self) -> KafkaCluster:
        return KafkaCluster(self.settings)

    def mlflow(self) -> ManagedProcess:
        return mlflow_process(self.settings)

    # -- commands ----------------------------------------------------------------------
    def up(self, only: tuple[str, ...] = COMPONENTS) -> list[ProcessStatus]:
        unknown = set(only) - set(COMPONENTS)
        if unknown:
            raise RefineryError(f"unknown component(s) {sorted(unknown)}; choose from {COMPONENTS}")
        for what, port in listener_ports(self.settings).items():
            if in_ephemeral_range(port):
                log.warning(
                    "%s listens on %d, inside the kernel's ephemeral port range: an outgoing "
                    "connection may hold it at random; choose a port below the range",
                    what,
                    port,
                )
        if "kafka" in only:
            self._kafka_up()
        if "mlflow" in only:
            for proc in self._handles("mlflow"):  # its database first, when it has one here
                self._keep(proc).start()
        if "vllm" in only:
            self._vllm_up()
        if "gateway" in only:
            ensure_local_secrets(self.settings)
            gateways = [self._keep(p) for p in self._handles("gateway")]
            for gateway in gateways:  # side by side; the balancer (if any) is the last
                gateway.spawn()
            for gateway in gateways:
                gateway.wait_healthy()
        if "deployer" in only:
            for proc in self._handles("deployer"):  # merged serving on: it starts its servers
                self._keep(proc).start()
        if "monitor" in only:
            workers = [self._keep(p) for p in self._handles("monitor")]
            for worker in workers:  # they share the partitions once all have joined
                worker.spawn()
            for worker in workers:
                worker.wait_healthy()
        if "evidently" in only:
            self._keep(evidently_ui_process(self.settings)).start()
        if "retrainer" in only:
            self._keep(retrainer_process(self.settings)).start()
        wanted = read_wanted(self.settings)
        write_wanted(self.settings, [c for c in COMPONENTS if c in only or c in wanted])
        return self.status()

    def supervise(self) -> bool:
        """Start the supervisor (restarts what dies); True if it was not running yet."""
        return self._keep(supervisor_process(self.settings)).start()

    def running(self, component: str) -> bool:
        """Is every process of ``component`` alive (pid check only: cheap, no health probe)?"""
        return all(p.pid() is not None for p in self._handles(component))

    def _handles(self, component: str) -> list[ManagedProcess]:
        s = self.settings
        return {
            "kafka": self._kafka_handles,
            "mlflow": lambda: [*self._database(), self.mlflow()],
            "vllm": lambda: [vllm_process(s, replica=i) for i in range(s.vllm_replicas)],
            "gateway": lambda: [
                *(gateway_process(s, i) for i in range(s.gateway_replicas)),
                *([balancer_process(s)] if s.gateway_replicas > 1 else []),
            ],
            "monitor": lambda: [
                monitor_process(s, replica_name("monitor", i), s.monitor_metrics_port + i)
                for i in range(s.monitor_workers)
            ],
            "deployer": lambda: [deployer_process(s)] if s.serve_merged else [],
            "evidently": lambda: [evidently_ui_process(s)],
            "retrainer": lambda: [retrainer_process(s)],
        }[component]()

    def _kafka_up(self) -> None:
        cluster = self.kafka()
        cluster.prepare()
        procs = [self._keep(p) for p in cluster.processes()]
        for proc in procs:  # a KRaft quorum needs its voters up together
            proc.spawn()
        for proc in procs:
            proc.wait_healthy()
        wait_for_broker(cluster.bootstrap, timeout_s=90, min_brokers=len(procs))
        created = ensure_topics(self.settings)
        if created:
            log.info("kafka: created %d topics", len(created))

    def _vllm_up(self) -> None:
        from refinery.retrainer.bootstrap import bootstrap  # heavy: torch + transformers

        registry = ModelRegistry(self.settings)
        champion = registry.champion() if registry.exists() else None
        if champion is None:
            log.info("no champion in the registry yet: bootstrapping the base model")
            champion = bootstrap(self.settings, load_task(self.settings.task_file)).version
        base = registry.serving_base(champion)
        model_dir = registry.local_copy(base, self.settings.models_dir)
        procs = [
            self._keep(vllm_process(self.settings, model_dir, base.version, replica))
            for replica in range(self.settings.vllm_replicas)
        ]
        for proc in procs:  # replicas start side by side
            proc.spawn()
        for proc in procs:
            proc.wait_healthy()

    def down(self, only: tuple[str, ...] = COMPONENTS) -> list[str]:
        """Stop in reverse order; returns the names of what was running. The supervisor
        lets go of these first (and stops with the last of them), so it undoes no stop."""
        stopped = []
        left = [c for c in read_wanted(self.settings) if c not in only]
        write_wanted(self.settings, left)
        # Every replica a setting allows, not only today's count: a stack started with
        # REFINERY_MONITOR_WORKERS=2 and stopped without it left its second worker running.
        every = Stack(self.settings.model_copy(update={**_MOST_REPLICAS, "serve_merged": True}))
        procs = [
            *([supervisor_process(self.settings)] if not left else []),
            *[p for c in reversed(COMPONENTS) if c in only for p in reversed(every._handles(c))],
        ]
        if "deployer" in only:  # after the deployer, which would start them again
            at = next((i for i, p in enumerate(procs) if p.name == "deployer"), len(procs))
            procs[at + 1 : at + 1] = merged_slots(self.settings)
        for proc in (self._started.get(p.name, p) for p in procs):
            if proc.stop():
                stopped.append(proc.name)
        return stopped

    def _database(self) -> list[ManagedProcess]:
        """The PostgreSQL server MLflow needs here (none for SQLite or an external one)."""
        s = self.settings
        if s.mlflow_backend == "postgresql" and s.mlflow_backend_uri is None:
            return [postgres_process(s)]
        return []

    def _kafka_handles(self) -> list[ManagedProcess]:
        try:
            return self.kafka().processes()
        except RefineryError:
            return []

    def status(self) -> list[ProcessStatus]:
        s = self.settings
        rows = []
        kafka_procs = self._kafka_handles()
        addresses = self.kafka().bootstrap.split(",") if kafka_procs else []
        for proc, address in zip(kafka_procs, addresses, strict=True):
            rows.append(self._row(proc, address))
        for database in self._database():
            rows.append(self._row(database, f"{s.postgres_host}:{s.postgres_port}"))
        rows.append(self._row(self.mlflow(), s.mlflow_uri))
        for i in range(s.vllm_replicas):
            rows.append(
                self._row(vllm_process(s, replica=i), f"http://{s.vllm_host}:{s.vllm_port + i}")
            )
        for i in range(s.gateway_replicas):
            url = f"http://{s.gateway_host}:{s.gateway_port + i}"
            rows.append(self._row(gateway_process(s, i), url))
        if s.gateway_replicas > 1:
            rows.append(self._row(balancer_process(s), balancer_url(s)))
        if s.serve_merged or deployer_process(s).pid() is not None:
            rows.append(self._row(deployer_process(s), "merges and serves the champion"))
            for slot, proc in enumerate(merged_slots(s)):
                rows.append(self._row(proc, merged_url(s, slot)))
        for worker in self._handles("monitor"):
            rows.append(self._row(worker, f"faust app {s.monitor_app_id}"))
        rows.append(self._row(evidently_ui_process(s), s.evidently_ui_url))
        rows.append(self._row(retrainer_process(s), "consumer of triggers"))
        rows.append(self._row(supervisor_process(s), "restarts what dies"))
        return rows

    def restarts(self) -> dict[str, tuple[int, str]]:
        """Per component: restarts the supervisor made, and when the last one was."""
        counts: dict[str, tuple[int, str]] = {}
        for r in read_restarts(self.settings):
            counts[r.component] = (counts.get(r.component, (0, ""))[0] + 1, r.at)
        return counts

    @staticmethod
    def _row(proc: ManagedProcess, address: str) -> ProcessStatus:
        pid = proc.pid()
        return ProcessStatus(
            proc.name, pid, pid is not None and proc.is_healthy(), address, str(proc.log_file)
        )

    def champion(self) -> VersionInfo | None:
        registry = ModelRegistry(self.settings)
        return registry.champion() if registry.exists() else None

    def canary(self) -> tuple[str, float] | None:
        """The canary's version and share of users, while one runs."""
        canary = ModelRegistry(self.settings).canary()
        if canary is None:
            return None
        return canary.version, float(canary.tags.get(CANARY_SHARE_TAG, "0"))

    def lag(self) -> dict[str, dict[str, int]]:
        return consumer_lag(self.settings.kafka_bootstrap)
