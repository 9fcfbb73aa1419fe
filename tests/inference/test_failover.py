"""A gateway on three Kafka nodes (every partition on all three, min ISR 2) keeps taking
feedback when a partition leader dies, and refuses it, never acknowledging, when a second
node dies too."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from refinery.common.events import FeedbackEvent, PredictionEvent
from refinery.common.kafka import ensure_topics, wait_for_broker
from refinery.common.settings import Settings
from refinery.common.topics import Stream, Topics
from refinery.stack.gateway import ensure_local_secrets, gateway_process
from refinery.stack.kafka import KafkaCluster
from refinery.stack.process import ManagedProcess
from refinery.stack.stack import Stack
from tests.conftest import API_KEYS
from tests.inference.helpers import read_events
from tests.ports import FAILOVER, ports

pytestmark = pytest.mark.slow  # a stack of its own (make test-slow)

PROMPT = "Ticket: my parcel never arrived\nTeam:"
HEADERS = {"Authorization": f"Bearer {API_KEYS['admin']}"}
# Feedback may be refused this long after the kill, never longer: the dead broker leaves the
# ISR only once the KRaft controller fences it (a controller election, then the 9 s broker
# session timeout); until then acks=all cannot complete on any partition it replicates.
FAILOVER_WINDOW_S = 15.0
# Traffic goes on this long after the kill: the window, then time to see it stay healthy.
AFTER_KILL_S = 30.0


@dataclass
class Traffic:
    """What the clients saw, with times relative to the start of the test."""

    predictions: list[str] = field(default_factory=list)
    # (started, answered, status, feedback_id) of every feedback request
    feedback: list[tuple[float, float, int, str]] = field(default_factory=list)
    failed_completions: list[str] = field(default_factory=list)
    # (asked at, status, kafka check) of every /readyz
    readiness: list[tuple[float, int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _complete(http: httpx.Client, settings: Settings, traffic: Traffic) -> str | None:
    try:
        done = http.post(
            "/v1/completions",
            json={
                "model": settings.registered_model,
                "prompt": PROMPT,
                "max_tokens": 2,
                "temperature": 0,
            },
        )
    except httpx.HTTPError as exc:
        with traffic.lock:
            traffic.failed_completions.append(repr(exc))
        return None
    if done.status_code != 200:
        with traffic.lock:
            traffic.failed_completions.append(f"{done.status_code} {done.text[:200]}")
        return None
    prediction_id: str = done.json()["id"]
    with traffic.lock:
        traffic.predictions.append(prediction_id)
    return prediction_id


def _rate(http: httpx.Client, traffic: Traffic, prediction_id: str, user: str) -> None:
    started = time.monotonic()
    try:
        rated = http.post(
            "/v1/feedback", json={"prediction_id": prediction_id, "rating": "up", "user": user}
        )
        status = rated.status_code
        feedback_id = rated.json()["feedback_id"] if status == 202 else ""
        if status == 503 and rated.headers.get("Retry-After") != "5":
            status = -503  # a refusal without Retry-After is a failure of its own
    except httpx.HTTPError:
        status, feedback_id = 0, ""
    with traffic.lock:
        traffic.feedback.append((started, time.monotonic(), status, feedback_id))


def _rate_on(go: threading.Event, settings: Settings, traffic: Traffic, prediction_id: str) -> None:
    with httpx.Client(base_url=settings.gateway_url, headers=HEADERS, timeout=60) as http:
        go.wait()
        _rate(http, traffic, prediction_id, "burst")


def _drive(settings: Settings, traffic: Traffic, stop: threading.Event, name: str) -> None:
    """One client: a completion, then feedback on it, until ``stop``."""
    with httpx.Client(base_url=settings.gateway_url, headers=HEADERS, timeout=60) as http:
        n = 0
        while not stop.is_set():
            prediction_id = _complete(http, settings, traffic)
            if prediction_id is not None:
                n += 1
                _rate(http, traffic, prediction_id, f"{name}-{n}")
            time.sleep(0.1)


def _probe_readiness(settings: Settings, traffic: Traffic, stop: threading.Event) -> None:
    with httpx.Client(base_url=settings.gateway_url, timeout=30) as http:
        while not stop.is_set():
            asked = time.monotonic()
            try:
                ready = http.get("/readyz")
                entry = (asked, ready.status_code, ready.json().get("kafka", ""))
            except httpx.HTTPError as exc:
                entry = (asked, 0, repr(exc))
            with traffic.lock:
                traffic.readiness.append(entry)
            stop.wait(1.0)


def _replication(settings: Settings, stream: Stream) -> tuple[set[int], str]:
    """The replica counts of ``stream``'s partitions, and its min.insync.replicas."""
    topic = Topics.from_settings(settings).name(stream)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        # Asked of any broker: one that has not applied the new topic's metadata yet
        # answers without its partitions or its configs for a moment.
        deadline = time.monotonic() + 30
        while True:
            [described] = admin.describe_topics([topic])
            resource = ConfigResource(ConfigResourceType.TOPIC, topic)
            configs = admin.describe_configs([resource])["topic"][topic]
            known = described["partitions"] and "min.insync.replicas" in configs
            if known or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        admin.close()
    replicas = {len(p["replica_nodes"]) for p in described["partitions"]}
    return replicas, configs.get("min.insync.replicas", {}).get("value", "")


def _controller_leading_predictions(settings: Settings) -> tuple[int, list[int]]:
    """The active KRaft controller, and the predictions partitions it leads."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        quorum = admin.describe_metadata_quorum()
        [topic] = admin.describe_topics([Topics.from_settings(settings).name(Stream.PREDICTIONS)])
    finally:
        admin.close()
    controller = int(quorum["topics"][0]["partitions"][0]["leader_id"])
    led = [p["partition_index"] for p in topic["partitions"] if p["leader_id"] == controller]
    return controller, led


@pytest.fixture
def serving(stack: Stack, bootstrapped: Settings) -> Settings:
    """The session's MLflow (with a champion) and vLLM serving it: all the gateway needs
    besides Kafka."""
    stack.up(("vllm",))
    return stack.settings


@pytest.fixture
def cluster(serving: Settings, tmp_path: Path) -> Iterator[tuple[Settings, list[ManagedProcess]]]:
    """Three Kafka nodes of its own (RF 3, min ISR 2); MLflow and vLLM are the session's."""
    own = ports(FAILOVER)
    settings = serving.model_copy(
        update={
            "var_dir": tmp_path,
            "kafka_nodes": 3,
            "kafka_port": own["kafka_port"],
            "kafka_controller_port": own["kafka_controller_port"],
            "kafka_bootstrap": ",".join(f"127.0.0.1:{own['kafka_port'] + i}" for i in range(3)),
            "gateway_port": own["gateway_port"],
        }
    )
    kafka = KafkaCluster(settings, data_dir=tmp_path / "kafka")
    kafka.prepare()
    procs = kafka.processes()
    for proc in procs:
        proc.spawn()
    try:
        for proc in procs:
            proc.wait_healthy()
        wait_for_broker(settings.kafka_bootstrap, timeout_s=90, min_brokers=3)
        ensure_topics(settings)
        assert _replication(settings, Stream.FEEDBACK) == ({3}, "2")
        yield settings, procs
    finally:
        # A throwaway cluster: with a voter dead, the last node cannot shut down cleanly
        # (no quorum) and would sit out the whole stop timeout.
        for proc in procs:
            proc.kill()


def test_feedback_survives_the_death_of_a_partition_leader(
    cluster: tuple[Settings, list[ManagedProcess]],
) -> None:
    """The node killed leads a predictions partition and is the active KRaft controller:
    the worst single death, since fencing it waits for a new controller first. It is also
    the first address of the gateway's bootstrap list."""
    settings, procs = cluster
    victim, led = _controller_leading_predictions(settings)
    assert led, f"controller {victim} leads no predictions partition"
    addresses = settings.kafka_bootstrap.split(",")
    first = addresses.pop(victim - 1)
    settings = settings.model_copy(update={"kafka_bootstrap": ",".join([first, *addresses])})
    ensure_local_secrets(settings)
    gateway = gateway_process(settings)
    traffic = Traffic()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_drive, args=(settings, traffic, stop, f"c{i}")) for i in range(3)
    ]
    threads.append(threading.Thread(target=_probe_readiness, args=(settings, traffic, stop)))
    backlog = -1.0
    try:
        gateway.start()
        for thread in threads:
            thread.start()
        time.sleep(5)
        with traffic.lock:
            warm = list(traffic.feedback)
            recent = traffic.predictions[-6:]
        assert warm and all(s == 202 for _, _, s, _ in warm), warm

        # Feedback on several partitions at once as the node dies: records the failover
        # catches in flight, or sent to a leader that is gone.
        go = threading.Event()
        burst = [
            threading.Thread(target=_rate_on, args=(go, settings, traffic, pid)) for pid in recent
        ]
        for thread in burst:
            thread.start()
        go.set()
        killed_at = time.monotonic()
        procs[victim - 1].kill()
        for thread in burst:
            thread.join()
        time.sleep(max(0.0, killed_at + AFTER_KILL_S - time.monotonic()))
        stop.set()
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=settings.gateway_url, timeout=10) as http:
            ready = http.get("/readyz")
            deadline = time.monotonic() + 60
            while backlog != 0 and time.monotonic() < deadline:
                for line in http.get("/metrics").text.splitlines():
                    if line.startswith("refinery_prediction_log_backlog "):
                        backlog = float(line.split()[1])
                time.sleep(0.5)
        _check_failover(settings, traffic, killed_at, victim, led, ready, backlog)

        # A second node dies: one replica left, below min ISR 2. A rating is refused (503,
        # Retry-After) within the ack timeout; acks=all never completes, so none is lost.
        procs[next(i for i in range(3) if i != victim - 1)].kill()
        with httpx.Client(base_url=settings.gateway_url, headers=HEADERS, timeout=60) as http:
            refused = http.post(
                "/v1/feedback",
                json={"prediction_id": traffic.predictions[-1], "rating": "up", "user": "last"},
            )
        assert refused.status_code == 503, refused.text
        assert refused.headers.get("Retry-After"), refused.headers
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join()
        gateway.stop()


def _check_failover(
    settings: Settings,
    traffic: Traffic,
    killed_at: float,
    victim: int,
    led: list[int],
    ready: httpx.Response,
    backlog: float,
) -> None:
    """Refused for a few seconds at most, ready again, and every acknowledged rating and
    answered prediction in Kafka."""
    after = sorted(
        (t - killed_at, done - killed_at, s) for t, done, s, _ in traffic.feedback if t >= killed_at
    )
    refused = [(round(t, 1), s) for t, _, s in after if s != 202]
    last_refused = max((t for t, _, s in after if s != 202), default=0.0)
    back_at = min((done for _, done, s in after if s == 202), default=float("inf"))
    not_ready = [(round(t - killed_at, 1), s, k) for t, s, k in traffic.readiness if s != 200]
    print(
        f"\nkilled node {victim} (controller, leads predictions {led}); {len(after)} feedback "
        f"after the kill; first acknowledged {back_at:.1f}s after it; refused (started s "
        f"after the kill, status): {refused}; /readyz not ready: {not_ready}"
    )
    assert traffic.failed_completions == []
    assert back_at < FAILOVER_WINDOW_S, refused
    assert last_refused < FAILOVER_WINDOW_S, refused
    assert sum(1 for t, _, s in after if t >= FAILOVER_WINDOW_S and s == 202) >= 10, after
    settled = [(s, k) for t, s, k in traffic.readiness if t >= killed_at + FAILOVER_WINDOW_S]
    assert settled and all(s == 200 and k == "ok" for s, k in settled), not_ready
    assert ready.status_code == 200 and ready.json()["kafka"] == "ok", ready.text
    assert backlog == 0

    acknowledged = {f for _, _, s, f in traffic.feedback if s == 202}
    logged = read_events(settings, Stream.FEEDBACK, acknowledged, "feedback_id")
    assert {e.feedback_id for e in logged if isinstance(e, FeedbackEvent)} == acknowledged
    answered = set(traffic.predictions)
    logged = read_events(settings, Stream.PREDICTIONS, answered, "prediction_id")
    assert {e.prediction_id for e in logged if isinstance(e, PredictionEvent)} == answered
