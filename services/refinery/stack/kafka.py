"""Apache Kafka in KRaft mode on loopback: one node, or three (replication 3, min ISR 2)."""

from __future__ import annotations

import base64
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from refinery.common.exceptions import ConfigError, ProcessError
from refinery.common.resources import packaged
from refinery.common.settings import Settings
from refinery.stack.process import ManagedProcess

LOG4J_CONFIG = packaged("kafka-log4j2.properties")  # infra/kafka/log4j2.properties


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class KafkaNode:
    """One combined broker+controller of the cluster."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def formatted(self) -> bool:
        return (self.data_dir / "logs" / "meta.properties").exists()


class KafkaCluster:
    """Writes configs, formats storage once, and makes a ManagedProcess per node."""

    def __init__(
        self,
        settings: Settings,
        data_dir: Path | None = None,
        nodes: int | None = None,
    ) -> None:
        if settings.kafka_libs is None or not Path(settings.kafka_libs).is_dir():
            raise ConfigError(
                f"REFINERY_KAFKA_LIBS={settings.kafka_libs} is not a folder of Kafka jars; "
                "run `make setup` (infra/setup.sh resolves them from Maven Central)"
            )
        self.settings = settings
        self.host = settings.kafka_host  # advertised to clients and the other nodes
        self.bind_host = settings.kafka_bind_host or settings.kafka_host
        self.libs = Path(settings.kafka_libs)
        self.data_dir = (data_dir or settings.var_dir / "kafka").resolve()
        count = nodes or settings.kafka_nodes
        self.nodes = [
            KafkaNode(
                i + 1,
                settings.kafka_port + i,
                settings.kafka_controller_port + i,
                self.data_dir / f"node-{i + 1}",
            )
            for i in range(count)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            self.settings.kafka_java,
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def _properties(self, node: KafkaNode) -> str:
        replicas = len(self.nodes)
        min_isr = 2 if replicas >= 3 else 1
        voters = ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in self.nodes)
        lines = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.bind_host}:{node.port},"
            f"CONTROLLER://{self.bind_host}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": node.data_dir / "logs",
            "num.partitions": self.settings.topic_partitions,
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            # Topics are created on purpose (refinery.common.kafka.ensure_topics, faust).
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": 0,
            "unclean.leader.election.enable": "false",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def prepare(self) -> None:
        """Write configs and format storage for nodes that have none (a restart keeps data)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.data_dir / "cluster.id"
        if not id_file.exists():
            raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            id_file.write_text(raw + "\n")
        cluster_id = id_file.read_text().strip()
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            node.config_file.write_text(self._properties(node))
            if node.formatted:
                continue
            argv = self._java(
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",  # an id may start with "-": keep it one token
                "-c",
                str(node.config_file),
            )
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ProcessError(
                    f"formatting Kafka storage for node {node.node_id} failed:\n"
                    f"{done.stdout}\n{done.stderr}"
                )

    def processes(self) -> list[ManagedProcess]:
        single = len(self.nodes) == 1
        return [
            ManagedProcess(
                name="kafka" if single else f"kafka-{node.node_id}",
                argv=self._java("kafka.Kafka", str(node.config_file), heap="512m"),
                run_dir=self.settings.run_dir,
                log_dir=self.settings.log_dir,
                # A node is healthy once its broker port accepts connections; the cluster is
                # healthy once every node answers metadata (checked by wait_for_broker).
                health=lambda port=node.port: _port_open(self.host, port),  # type: ignore[misc]
                ports={"broker": node.port, "controller": node.controller_port},
                startup_timeout_s=90,
            )
            for node in self.nodes
        ]
