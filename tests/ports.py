"""The port plan of the test suite: each stack a test starts gets a block of its own.

Every block lies below the kernel's ephemeral range (``tests/stack/test_ports.py`` checks
it against the range read at run time), so no outgoing connection of the suite can take a
listener's port. ``REFINERY_TEST_PORT_BASE`` moves the whole plan, so two suites can run
side by side on one machine; under pytest-xdist each worker (gw0, gw1, ...) has a plan of
its own, ``WORKER_SPAN`` further on.
"""

from __future__ import annotations

import os
from typing import Any

BLOCK = 100
WORKER_SPAN = 10 * BLOCK  # room for ten blocks a worker
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
BASE = int(os.environ.get("REFINERY_TEST_PORT_BASE", "21000")) + WORKER * WORKER_SPAN

# One block per stack (or cluster) the suite starts; add a name here for a new one.
SESSION = 0  # tests/conftest.py: Kafka, MLflow, vLLM, gateway of the whole session
LOOP = 1  # tests/demo/test_closed_loop.py: the closed loop on a stack of its own
CLI = 2  # tests/cli/test_cli.py: `refinery up/status/down`
KAFKA_RESTART = 3  # tests/stack/test_kafka.py: one node restarted
FAILOVER = 5  # tests/inference/test_failover.py: a gateway on three Kafka nodes
OWN_MODEL = 6  # tests/retrainer/test_own_model.py: vLLM serving a user's architecture
FLOOD = 7  # tests/demo/test_flood.py: one key floods ratings while an app runs
KAFKA_ADDRESS = 8  # tests/stack/test_kafka.py: a broker on every interface
POSTGRES = 9  # tests/stack/test_postgres.py: MLflow on PostgreSQL
ALL_BLOCKS = (
    SESSION,
    LOOP,
    CLI,
    KAFKA_RESTART,
    FAILOVER,
    OWN_MODEL,
    FLOOD,
    KAFKA_ADDRESS,
    POSTGRES,
)
assert (max(ALL_BLOCKS) + 1) * BLOCK <= WORKER_SPAN, "a worker's plan overlaps the next one's"


def ports(block: int) -> dict[str, Any]:
    """Settings fields that put a stack on ``block``'s ports (addresses included)."""
    base = BASE + block * BLOCK
    kafka, mlflow = base, base + 20
    return {
        "kafka_port": kafka,  # + node index - 1
        "kafka_controller_port": base + 10,  # + node index - 1
        "kafka_bootstrap": f"127.0.0.1:{kafka}",
        "mlflow_port": mlflow,
        "mlflow_uri": f"http://127.0.0.1:{mlflow}",
        "vllm_port": base + 30,
        "gateway_port": base + 40,  # + replica index
        "balancer_port": base + 49,
        "monitor_metrics_port": base + 50,
        "retrainer_metrics_port": base + 60,
        "evidently_ui_port": base + 70,
        "postgres_port": base + 80,
        "vllm_merged_port": base + 90,  # + slot (0, 1)
    }
