"""What the fault and soak benches share: a whole stack of their own (supervised, on ports
away from a developer's stack), simulated apps and users driving it from a thread, and
readings of what reached Kafka and what each process holds in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient
from pydantic import SecretStr

from refinery.common.events import Event
from refinery.common.kafka import EventConsumer
from refinery.common.kafka.admin import consumer_lag
from refinery.common.settings import REPO_ROOT, Settings
from refinery.common.task import load_task
from refinery.common.topics import Stream, Topics
from refinery.demo.simulate import Request, Simulation, SimulationConfig, simulate
from refinery.retrainer.record import OUTCOME_TAG, TRIGGER_TAG
from refinery.stack.process import ManagedProcess, _group_members
from refinery.stack.stack import COMPONENTS, Stack
from refinery.stack.supervisor import supervisor_process

# The classification task at test size, with drift triggers off: retraining happens when a
# bench asks for it, so each fault meets a retraining at the moment it wants.
TASK = REPO_ROOT / "bench" / "task-faults.yaml"
ADMIN_KEY = "bench-admin-key"
APP_KEY = "bench-app-key"


def free_port() -> int:
    """A port nothing listens on now, for a process a bench starts beside the stack."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_settings(
    var_dir: Path, port_base: int, nodes: int, rate_limit_rps: float | None = None
) -> Settings:
    """A stack under ``var_dir`` listening on ``port_base`` and up (below the ephemeral
    range, away from the defaults and the test suite's 21000-21799). ``rate_limit_rps``:
    the per-key limit (default: the gateway's; 0 turns it off)."""
    mlflow_port = port_base + 20
    settings = Settings(
        var_dir=var_dir,
        task_file=TASK,
        kafka_nodes=nodes,
        kafka_port=port_base,
        kafka_controller_port=port_base + 10,
        mlflow_port=mlflow_port,
        mlflow_uri=f"http://127.0.0.1:{mlflow_port}",
        vllm_port=port_base + 30,
        gateway_port=port_base + 40,
        vllm_max_model_len=256,
        api_keys=SecretStr(f"{ADMIN_KEY}:admin,{APP_KEY}:inference+feedback"),
    )
    if rate_limit_rps is None:
        return settings
    return settings.model_copy(update={"rate_limit_rps": rate_limit_rps})


@contextlib.contextmanager
def running_stack(
    port_base: int, nodes: int, keep: bool = False, rate_limit_rps: float | None = None
) -> Iterator[Stack]:
    """Every process up and the supervisor watching, as ``refinery up`` leaves them."""
    var_dir = Path(tempfile.mkdtemp(prefix="refinery-bench-"))
    stack = Stack(bench_settings(var_dir, port_base, nodes, rate_limit_rps))
    # `kill PID` stops the stack too (the finally below), not only Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        stack.up()
        stack.supervise()
        yield stack
    finally:
        stack.down()
        if keep:
            print(f"logs kept under {var_dir / 'log'}")


def component(stack: Stack, name: str) -> ManagedProcess:
    """The handle of one process ("kafka-2" for a Kafka node)."""
    if name.startswith("kafka"):
        node = int(name.partition("-")[2] or 1)
        return stack.kafka().processes()[node - 1]
    [proc] = stack._handles(name)
    return proc


def processes(stack: Stack) -> dict[str, ManagedProcess]:
    """Every process of the stack by name, the supervisor's included."""
    names = [f"kafka-{i + 1}" for i in range(stack.settings.kafka_nodes)]
    names += [c for c in COMPONENTS if c != "kafka"]
    return {
        **{name: component(stack, name) for name in names},
        "supervisor": supervisor_process(stack.settings),
    }


def rss_mib(proc: ManagedProcess) -> float:
    """Resident memory of a process and everything in its group (vLLM's engine, MLflow's
    workers), in MiB; 0 when it is not running."""
    pid = proc.pid()
    if pid is None:
        return 0.0
    total_kib = 0
    for member in _group_members(pid) or [pid]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def wait_until(what: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> float | None:
    """Seconds until ``what()`` held, or None when it never did within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(Exception):
            if what():
                return time.monotonic() - started
        time.sleep(every_s)
    return None


class Traffic:
    """The demo's simulated apps and users (``services/refinery/demo/simulate.py``) on a thread:
    every request and rating is recorded with its time, status and acknowledged id."""

    def __init__(self, settings: Settings, rate: float, shift_share: float = 0.5) -> None:
        self.settings = settings
        self.config = SimulationConfig(
            rate=rate, shift_at_s=0.0, shift_share=shift_share, max_duration_s=24 * 3600.0
        )
        self._stop = threading.Event()
        self._result: list[Simulation] = []
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.started_at = 0.0
        self._live: Simulation | None = None

    def _run(self) -> None:
        task = load_task(self.settings.task_file).task
        sim = asyncio.run(
            simulate(
                self.settings.gateway_url,
                APP_KEY,
                self.settings.registered_model,
                task,
                self.config,
                done=self._observe,
            )
        )
        self._result.append(sim)

    def _observe(self, sim: Simulation) -> bool:
        self._live = sim
        return self._stop.is_set()

    def requests(self) -> list[Request]:
        """What was sent so far (a copy: the traffic thread keeps appending)."""
        return list(self._live.requests) if self._live is not None else []

    def start(self) -> None:
        self.started_at = time.time()
        self._thread.start()

    def now(self) -> float:
        """Seconds since the traffic started (the clock of every recorded request)."""
        return time.time() - self.started_at

    def stop(self) -> Simulation:
        self._stop.set()
        self._thread.join(timeout=120)
        return self._result[0]


def admin(settings: Settings) -> httpx.Client:
    return httpx.Client(
        base_url=settings.gateway_url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )


def ask_retrain(settings: Settings, reason: str) -> str:
    """A retraining asked for through the gateway's admin endpoint; its trigger id."""
    trigger_id = f"bench-{uuid.uuid4().hex[:8]}"
    with admin(settings) as http:
        for _ in range(30):  # the gateway may be restarting after an earlier fault
            with contextlib.suppress(httpx.HTTPError):
                answer = http.post(
                    "/v1/admin/retrain", json={"reason": reason, "trigger_id": trigger_id}
                )
                if answer.status_code == 202:
                    return trigger_id
            time.sleep(2)
    raise RuntimeError(f"retrain {trigger_id} was never accepted")


def outcome(settings: Settings, trigger_id: str) -> str | None:
    """The retraining run's recorded outcome (promoted, rejected, failed), None before."""
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TRIGGER_TAG}` = '{trigger_id}'"
    )
    done = [r.data.tags[OUTCOME_TAG] for r in runs if OUTCOME_TAG in r.data.tags]
    return done[0] if done else None


def ready(settings: Settings) -> bool:
    """The gateway's /readyz: Kafka reachable, vLLM answering, the champion served."""
    return httpx.get(f"{settings.gateway_url}/readyz", timeout=5).status_code == 200


def backlog(settings: Settings) -> float:
    """Predictions waiting in the gateway's outbox for Kafka."""
    text = httpx.get(f"{settings.gateway_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("refinery_prediction_log_backlog "):
            return float(line.split()[1])
    return float("nan")


def monitor_lag(settings: Settings) -> int:
    """Records of predictions and feedback the monitor has not committed yet."""
    topics = Topics.from_settings(settings)
    wanted = {topics.name(Stream.PREDICTIONS), topics.name(Stream.FEEDBACK)}
    try:
        per_topic = consumer_lag(settings.kafka_bootstrap).get(settings.monitor_app_id, {})
    except KeyError:  # kafka-python's end_offsets, while a partition's leader moves
        return -1
    if not wanted <= set(per_topic):
        return -1  # it has not committed on both yet
    return sum(n for topic, n in per_topic.items() if topic in wanted)


def read_topic(settings: Settings, stream: Stream, idle_polls: int = 4) -> list[Event]:
    """Every event on ``stream``, duplicates kept, read by a group of its own: until
    ``idle_polls`` empty polls after the first records (or 30 s without any)."""
    found: list[Event] = []
    with EventConsumer(settings, [stream], group_id=f"bench-{uuid.uuid4()}") as consumer:
        idle, deadline = 0, time.monotonic() + 30
        while idle < idle_polls and (found or time.monotonic() < deadline):
            batch = consumer.poll(timeout_ms=1000)
            idle = 0 if batch else idle + (1 if found else 0)
            found.extend(item.event for item in batch)
    return found
