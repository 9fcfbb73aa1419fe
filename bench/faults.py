"""Faults on real processes, under traffic: what the clients saw, what reached Kafka, how
long recovery took and whether the loop still closed (docs/RELIABILITY.md).

    python -m bench.faults               # one Kafka node: gateway, monitor, retrainer,
                                         # vLLM and MLflow faults in turn
    python -m bench.faults --nodes 3     # three nodes (RF 3, min ISR 2): a predictions
                                         # partition leader, then the active controller
    python -m bench.faults --only vllm-lora,monitor

A stack of its own starts under a temp dir (ports from --port-base) with the supervisor;
simulated apps send --rate completions/s and their users rate 70% of them, half with a
correction. Each fault is injected while that traffic runs; the next starts once the stack
has recovered. At the end the traffic stops, the outbox and the monitor drain, and every
topic is read back: each acknowledged prediction (200) and rating (202) must be on its
topic, and each acknowledged rating joined into an example by the monitor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from threading import Thread

from kafka import KafkaAdminClient

from bench.harness import (
    Traffic,
    admin,
    ask_retrain,
    backlog,
    component,
    monitor_lag,
    outcome,
    read_topic,
    ready,
    running_stack,
    wait_until,
)
from refinery.common.events import Event, ExampleEvent, FeedbackEvent, PredictionEvent
from refinery.common.kafka import EventProducer
from refinery.common.kafka.admin import consumer_lag
from refinery.common.registry import ModelRegistry
from refinery.common.settings import Settings
from refinery.common.task import load_task
from refinery.common.topics import Stream, Topics
from refinery.demo.corpus import generate
from refinery.demo.simulate import Request, Simulation
from refinery.stack.monitor import monitor_process
from refinery.stack.stack import Stack

RECOVERY_TIMEOUT_S = 600.0  # a fault not recovered from by then is reported as such
SETTLE_S = 20.0  # traffic between a recovery and the next fault


@dataclass
class Fault:
    """One injection and what came of it (times on the traffic clock, in seconds)."""

    name: str
    how: str
    at: float = math.nan  # injected
    until: float = math.inf  # the next fault's injection (or the end of traffic)
    recovered_s: float | None = None  # to the scenario's own "recovered" condition
    trigger_id: str = ""  # the retraining this fault hits, if any
    outcome: str = ""  # that retraining's recorded outcome
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    feedback_refused_by: dict[str, int] = field(default_factory=dict)  # "503": 40, ...
    completion_failed_by: dict[str, int] = field(default_factory=dict)  # "429": 16, ...
    # ratings the bench produced to Kafka itself (not through the gateway) during the fault:
    # each must be joined into an example, once after event_id dedup
    produced_feedback_ids: list[str] = field(default_factory=list, repr=False)


class Run:
    """The stack, its traffic and the faults injected so far."""

    def __init__(self, stack: Stack, traffic: Traffic) -> None:
        self.stack = stack
        self.settings: Settings = stack.settings
        self.traffic = traffic
        self.registry = ModelRegistry(self.settings)
        self.faults: list[Fault] = []
        self._killed: dict[str, int | None] = {}

    def inject(self, name: str, how: str) -> Fault:
        fault = Fault(name, how, at=self.traffic.now())
        if self.faults:
            self.faults[-1].until = fault.at
        self.faults.append(fault)
        print(f"[{fault.at:7.1f} s] {name}: {how}", flush=True)
        return fault

    def recover(self, fault: Fault, condition: Callable[[], bool]) -> None:
        waited = wait_until(condition, RECOVERY_TIMEOUT_S)
        fault.recovered_s = None if waited is None else self.traffic.now() - fault.at
        print(f"          recovered after {fault.recovered_s} s", flush=True)
        time.sleep(SETTLE_S)

    def kill(self, name: str, whole_group: bool = False) -> None:
        """SIGKILL ``name``: its leader alone (as ``kill -9 PID`` or the OOM killer does;
        children live on) or its whole process group."""
        proc = component(self.stack, name)
        self._killed[name] = proc.pid()
        if whole_group:
            proc.kill()
        else:
            proc.kill_leader()

    def healthy(self, name: str) -> bool:
        """A new instance of ``name`` (not the one killed) runs and answers its health check."""
        proc = component(self.stack, name)
        pid = proc.pid()
        return pid is not None and pid != self._killed.get(name) and proc.is_healthy()

    def log_offset(self, name: str) -> int:
        log_file = component(self.stack, name).log_file
        return log_file.stat().st_size if log_file.exists() else 0

    def logged_after(self, name: str, offset: int, text: str) -> bool:
        """Has ``name`` logged ``text`` past byte ``offset`` (a restart starts a new log)?"""
        log_file = component(self.stack, name).log_file
        with log_file.open("rb") as f:
            f.seek(offset if log_file.stat().st_size >= offset else 0)
            return text.encode() in f.read()

    def answered_by_champion_since(self, t: float) -> bool:
        champion = self.registry.champion()
        return champion is not None and any(
            r.t >= t and r.status == "ok" and r.version == champion.served_name
            for r in self.traffic.requests()
        )

    def retrain_until(
        self, fault_name: str, how: str, moment: Callable[[int], bool], delay_s: float = 0.0
    ) -> Fault:
        """Ask for a retraining and wait for ``moment`` (given the retrainer's log offset at
        the ask), then ``delay_s``; the caller injects the fault right after this returns."""
        offset = self.log_offset("retrainer")
        trigger_id = ask_retrain(self.settings, f"bench fault {fault_name}")
        reached = wait_until(lambda: moment(offset), RECOVERY_TIMEOUT_S, every_s=0.1)
        time.sleep(delay_s)
        fault = self.inject(fault_name, how)
        fault.trigger_id = trigger_id
        if reached is None:
            fault.notes.append("the moment to inject never came")
        return fault

    def training_started(self, offset: int) -> bool:
        return self.logged_after("retrainer", offset, "train: ")

    def recover_retraining(self, fault: Fault) -> None:
        trigger_id = fault.trigger_id

        def done() -> bool:
            return outcome(self.settings, trigger_id) is not None and ready(self.settings)

        self.recover(fault, done)
        fault.outcome = outcome(self.settings, trigger_id) or "no outcome"


# -- the faults ------------------------------------------------------------------------------
def gateway_with_backlog(run: Run) -> None:
    """Kafka frozen (SIGSTOP) so predictions pile up in the gateway's outbox, the gateway
    SIGKILLed with them on disk, Kafka thawed: the restarted gateway must send them all."""
    broker = component(run.stack, "kafka-1")
    broker_pid = broker.pid()
    assert broker_pid is not None
    fault = run.inject(
        "gateway",
        "Kafka frozen (SIGSTOP) 6 s, then the gateway SIGKILLed with its outbox "
        "backlog; Kafka thawed 3 s later",
    )
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        time.sleep(6)
        waiting = backlog(run.settings)
        fault.notes.append(f"outbox backlog at the kill: {waiting:.0f} predictions")
        run.kill("gateway")
        time.sleep(3)
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    run.recover(
        fault,
        lambda: run.healthy("gateway") and ready(run.settings) and backlog(run.settings) == 0,
    )


def monitor_mid_window(run: Run) -> None:
    fault = run.inject("monitor", "the faust worker SIGKILLed mid-window")
    run.kill("monitor")
    run.recover(fault, lambda: run.healthy("monitor") and 0 <= monitor_lag(run.settings) < 100)


REBALANCE_PAIRS = 5000


def _produce_pairs(settings: Settings, n: int, tag: str) -> list[str]:
    """``n`` predictions of retail tickets, each answered right and rated up, sent straight
    to Kafka as fast as it takes them; the feedback ids sent."""
    task = load_task(settings.task_file).task
    examples = generate(task, n, seed=97, domain="retail")
    sent: list[str] = []
    with EventProducer(settings) as producer:
        for i, ex in enumerate(examples):
            pid, user = f"{tag}-{i}", f"bench-user-{i % 200}"
            prediction = PredictionEvent(
                prediction_id=pid,
                endpoint="completions",
                prompt=ex.prompt,
                completion=ex.completion,
                model=settings.registered_model,
                model_version="1",
                served_name=f"{settings.registered_model}-v1",
                prompt_tokens=len(ex.prompt.split()),
                completion_tokens=1,
                latency_ms=10.0,
                segment=ex.segment,
                user=user,
            )
            rating = FeedbackEvent(
                feedback_id=f"{pid}:{user}", prediction_id=pid, rating="up", user=user
            )
            producer.send(Stream.PREDICTIONS, prediction, key=pid)
            producer.send(Stream.FEEDBACK, rating, key=pid)
            sent.append(rating.feedback_id)
        producer.flush()
    return sent


def monitor_in_rebalance(run: Run) -> None:
    """Two monitor workers share the partitions; a third joins while 5,000 prediction and
    rating pairs flow, and the first is SIGKILLed as soon as it starts revoking (mid-
    rebalance). Every pair must come out as one example."""
    extra = [monitor_process(run.settings, f"monitor-{n}") for n in ("b", "c")]
    extra[0].start()
    try:
        if wait_until(extra[0].is_healthy, 180) is None:
            raise RuntimeError("a second monitor worker never became ready")
        time.sleep(SETTLE_S)  # the group of two settled, traffic split between them
        offset = run.log_offset("monitor")
        fault = run.inject(
            "monitor in a rebalance",
            f"2 workers; {REBALANCE_PAIRS:,} pairs sent straight to Kafka; a 3rd worker "
            "started; the 1st SIGKILLed as soon as it began revoking its partitions",
        )
        producing = Thread(
            target=lambda: fault.produced_feedback_ids.extend(
                _produce_pairs(run.settings, REBALANCE_PAIRS, f"rebalance-{uuid.uuid4().hex[:8]}")
            )
        )
        producing.start()
        extra[1].start()
        revoking = wait_until(
            lambda: run.logged_after("monitor", offset, "Revoking previously assigned"),
            120,
            every_s=0.05,
        )
        if revoking is None:
            fault.notes.append("the first worker never began revoking: killed without it")
        run.kill("monitor")
        producing.join()
        run.recover(
            fault,
            lambda: (
                run.healthy("monitor")
                and all(p.is_healthy() for p in extra)
                and 0 <= monitor_lag(run.settings) < 100
            ),
        )
    finally:
        for proc in extra:
            proc.stop()


def retrainer_after_alias_move(run: Run) -> None:
    before = run.registry.champion()
    assert before is not None

    def moved(_: int) -> bool:
        now = run.registry.champion()
        return now is not None and now.version != before.version

    fault = run.retrain_until(
        "retrainer-after-promotion",
        "a retraining asked for; the retrainer SIGKILLed as soon as the champion alias "
        "moved to its challenger (before the outcome was recorded)",
        moved,
    )
    run.kill("retrainer")
    run.recover_retraining(fault)
    champion = run.registry.champion()
    fault.notes.append(f"champion after recovery: v{champion.version if champion else '?'}")


def ensure_lora_champion(run: Run) -> None:
    """The vLLM fault needs an adapter as champion: promote the newest version if not."""
    champion = run.registry.champion()
    if champion is not None and champion.tags.get("kind") == "lora":
        return
    newest = max(
        int(v.version)
        for v in run.registry.client.search_model_versions(f"name = '{run.registry.name}'")
    )
    with admin(run.settings) as http:
        http.post("/v1/admin/promote", json={"version": str(newest), "reason": "bench: LoRA"})
    wait_until(lambda: ready(run.settings), 120)


def vllm_with_lora(run: Run) -> None:
    ensure_lora_champion(run)
    champion = run.registry.champion()
    fault = run.inject(
        "vllm",
        "vLLM's API server SIGKILLed alone (engine left as an orphan) while a LoRA "
        "adapter is champion",
    )
    fault.notes.append(f"champion v{champion.version if champion else '?'}")
    run.kill("vllm")
    run.recover(
        fault,
        lambda: (
            run.healthy("vllm")
            and ready(run.settings)
            and run.answered_by_champion_since(fault.at + 1)
        ),
    )


def into_training(run: Run, name: str, victim: str) -> Fault:
    """A retraining asked for; returns 10 s into its training, the fault named."""
    how = f"a retraining asked for; {victim} SIGKILLed 10 s into training"
    return run.retrain_until(name, how, run.training_started, delay_s=10)


def retrainer_mid_training(run: Run) -> None:
    fault = into_training(run, "retrainer-mid-training", "the retrainer")
    offset = run.log_offset("retrainer")
    run.kill("retrainer")
    run.recover_retraining(fault)
    if run.logged_after("retrainer", offset, "resuming from"):
        fault.notes.append("training resumed from its checkpoint")


def mlflow_mid_training(run: Run) -> None:
    fault = into_training(run, "mlflow-mid-training", "MLflow (server and workers)")
    run.kill("mlflow", whole_group=True)
    run.recover_retraining(fault)


def mlflow_at_promotion(run: Run) -> None:
    known = {
        v.version
        for v in run.registry.client.search_model_versions(f"name = '{run.registry.name}'")
    }

    def registered(_: int) -> bool:
        found = run.registry.client.search_model_versions(f"name = '{run.registry.name}'")
        return any(v.version not in known for v in found)

    fault = run.retrain_until(
        "mlflow-at-promotion",
        "a retraining asked for; MLflow SIGKILLed as soon as the challenger was registered "
        "(between registration and the gate's alias move or rejection)",
        registered,
    )
    run.kill("mlflow", whole_group=True)
    run.recover_retraining(fault)


def _predictions_partition_leaders(settings: Settings) -> tuple[int, dict[int, int]]:
    """The active KRaft controller and, per predictions partition, its leader."""
    kafka_admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        quorum = kafka_admin.describe_metadata_quorum()
        [topic] = kafka_admin.describe_topics(
            [Topics.from_settings(settings).name(Stream.PREDICTIONS)]
        )
    finally:
        kafka_admin.close()
    controller = int(quorum["topics"][0]["partitions"][0]["leader_id"])
    return controller, {p["partition_index"]: p["leader_id"] for p in topic["partitions"]}


def kafka_recovered(run: Run, node: str, fault: Fault) -> Callable[[], bool]:
    def recovered() -> bool:
        rated_since = any(
            r.feedback_t is not None and r.feedback_t > fault.at + 1 for r in run.traffic.requests()
        )
        return run.healthy(node) and ready(run.settings) and rated_since

    return recovered


def kafka_partition_leader(run: Run) -> None:
    controller, leaders = _predictions_partition_leaders(run.settings)
    victim = next((n for n in leaders.values() if n != controller), leaders[0])
    fault = run.inject(
        "kafka-partition-leader",
        f"the broker leading a predictions partition (node {victim}, not the controller) SIGKILLed",
    )
    run.kill(f"kafka-{victim}")
    run.recover(fault, kafka_recovered(run, f"kafka-{victim}", fault))


def kafka_controller(run: Run) -> None:
    controller, leaders = _predictions_partition_leaders(run.settings)
    led = sorted(p for p, n in leaders.items() if n == controller)
    fault = run.inject(
        "kafka-controller",
        f"the active KRaft controller (node {controller}; leads predictions partitions "
        f"{led or 'none'}) SIGKILLed",
    )
    run.kill(f"kafka-{controller}")
    run.recover(fault, kafka_recovered(run, f"kafka-{controller}", fault))


def final_retraining(run: Run) -> None:
    """After every fault: a retraining asked for must reach an outcome and be served."""
    trigger_id = ask_retrain(run.settings, "bench: the loop after the faults")
    fault = run.inject("loop-after-faults", "a retraining asked for after every fault")
    fault.trigger_id = trigger_id
    run.recover_retraining(fault)


ONE_NODE = {
    "gateway": gateway_with_backlog,
    "monitor": monitor_mid_window,
    "retrainer-after-promotion": retrainer_after_alias_move,
    "vllm": vllm_with_lora,
    "retrainer-mid-training": retrainer_mid_training,
    "mlflow-mid-training": mlflow_mid_training,
    "mlflow-at-promotion": mlflow_at_promotion,
    # Last: its 5,000 extra examples would lengthen every later fault's training.
    "monitor-rebalance": monitor_in_rebalance,
}
THREE_NODES = {
    "kafka-partition-leader": kafka_partition_leader,
    "kafka-controller": kafka_controller,
}


# -- counting ---------------------------------------------------------------------------------
def _duplicates(events: list[Event], key: Callable[[Event], str], wanted: set[str]) -> int:
    """Records with the same logical id beyond the first, once exact redeliveries (the same
    ``event_id``) are dropped, as consumers drop them."""
    per_id = Counter(key(e) for e in {e.event_id: e for e in events}.values() if key(e) in wanted)
    return sum(n - 1 for n in per_id.values())


def answered_at(r: Request) -> float:
    """When the client had its answer (a request sent just before a fault fails in it)."""
    return r.t + (r.latency or 0.0)


def count(fault: Fault, sim: Simulation, topics: dict[Stream, list[Event]]) -> None:
    inside = [r for r in sim.requests if fault.at <= answered_at(r) < fault.until]
    acked = [r.prediction_id for r in inside if r.status == "ok"]
    rated = [r.feedback_id for r in inside if r.feedback_id]
    predictions = topics[Stream.PREDICTIONS]
    feedback = topics[Stream.FEEDBACK]
    examples = topics[Stream.EXAMPLES]
    on = {
        "predictions": {e.prediction_id for e in predictions if isinstance(e, PredictionEvent)},
        "feedback": {e.feedback_id for e in feedback if isinstance(e, FeedbackEvent)},
        "examples": {e.feedback_id for e in examples if isinstance(e, ExampleEvent)},
    }
    fault.counts = {
        "requests": len(inside),
        "completion_errors": sum(r.status == "error" for r in inside),
        "feedback_refused": sum(len(r.feedback_refusals) for r in inside),
        "predictions_acked": len(acked),
        "feedback_acked": len(rated),
        "predictions_missing": sum(p not in on["predictions"] for p in acked),
        "feedback_missing": sum(f not in on["feedback"] for f in rated),
        "examples_missing": sum(f not in on["examples"] for f in rated),
        "prediction_duplicates": _duplicates(
            predictions, lambda e: getattr(e, "prediction_id", ""), set(acked)
        ),
        "feedback_duplicates": _duplicates(
            feedback, lambda e: getattr(e, "feedback_id", ""), set(rated)
        ),
    }
    fault.feedback_refused_by = dict(Counter(x for r in inside for x in r.feedback_refusals))
    fault.completion_failed_by = dict(Counter(r.error_kind for r in inside if r.status == "error"))
    if fault.produced_feedback_ids:
        produced = set(fault.produced_feedback_ids)
        fault.counts["produced_feedback"] = len(produced)
        fault.counts["produced_examples_missing"] = len(produced - on["examples"])
        fault.counts["produced_example_duplicates"] = _duplicates(
            examples, lambda e: getattr(e, "feedback_id", ""), produced
        )
        fault.notes.append(
            f"of the {len(produced):,} pairs sent straight to Kafka: "
            f"{fault.counts['produced_examples_missing']} never joined into an example, "
            f"{fault.counts['produced_example_duplicates']} examples twice after dedup"
        )
    errors = [answered_at(r) for r in inside if r.status == "error" or r.feedback_refusals]
    if errors:
        fault.notes.append(f"last refused request {max(errors) - fault.at:.1f} s after the fault")


def recovery(f: Fault) -> str:
    if f.name == "baseline":
        return "-"
    return "not recovered" if f.recovered_s is None else f"{f.recovered_s:.0f} s"


def _by_kind(counts: dict[str, int]) -> str:
    """' (503: 40, ReadTimeout: 9)': what refused the tries, most frequent first."""
    if not counts:
        return ""
    kinds = sorted(counts.items(), key=lambda kv: -kv[1])
    return " (" + ", ".join(f"{kind}: {n}" for kind, n in kinds) + ")"


def table(faults: list[Fault]) -> str:
    rows = [
        "| fault | non-2xx (completions / feedback) | acked, missing downstream | "
        "duplicates after event_id dedup | recovered in | outcome |",
        "|---|---|---|---|---|---|",
    ]
    for f in faults:
        c = f.counts
        missing = c["predictions_missing"] + c["feedback_missing"] + c["examples_missing"]
        rows.append(
            f"| {f.name} | {c['completion_errors']} of {c['requests']}"
            f"{_by_kind(f.completion_failed_by)} / "
            f"{c['feedback_refused']}{_by_kind(f.feedback_refused_by)} | "
            f"{missing} of {c['predictions_acked']} predictions + "
            f"{c['feedback_acked']} ratings | {c['prediction_duplicates']} / "
            f"{c['feedback_duplicates']} | "
            f"{recovery(f)} | "
            f"{f.outcome or '-'} |"
        )
    return "\n".join(rows)


def consumer_lag_now(settings: Settings) -> dict[str, dict[str, int]] | str:
    try:
        return consumer_lag(settings.kafka_bootstrap)
    except Exception as exc:  # a reading for the report, not worth losing the run over
        return f"unreadable ({type(exc).__name__}: {exc})"


def drain(settings: Settings) -> None:
    """Wait for the outbox to empty and the monitor to catch up with both streams."""
    for what, condition in (
        ("outbox", lambda: backlog(settings) == 0),
        ("monitor lag", lambda: monitor_lag(settings) == 0),
    ):
        if wait_until(condition, 90, every_s=2) is None:
            print(f"warning: {what} did not drain within 90 s: {consumer_lag_now(settings)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="completions per second")
    parser.add_argument("--only", help="comma-separated fault names (default: all)")
    parser.add_argument("--port-base", type=int, default=31000)
    parser.add_argument("--warm-up", type=float, default=90.0, help="seconds before a fault")
    parser.add_argument("--out", type=Path, help="write the faults as JSON here")
    args = parser.parse_args()
    catalogue = ONE_NODE if args.nodes == 1 else THREE_NODES
    chosen = args.only.split(",") if args.only else list(catalogue)
    unknown = set(chosen) - set(catalogue)
    if unknown:
        parser.error(f"unknown fault(s) {sorted(unknown)} on {args.nodes} node(s)")

    with running_stack(args.port_base, args.nodes, keep=True) as stack:
        # This process's own MLflow calls fail fast while MLflow is down (the probes retry);
        # the stack's processes, started already, keep their retry settings.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
        settings = stack.settings
        traffic = Traffic(settings, args.rate)
        run = Run(stack, traffic)
        traffic.start()
        time.sleep(args.warm_up)
        run.inject("baseline", "no fault: the traffic alone")
        time.sleep(SETTLE_S)
        for name in chosen:
            catalogue[name](run)
        final_retraining(run)
        run.faults[-1].until = traffic.now()
        sim = traffic.stop()
        if args.out:  # what the clients saw, kept before anything else can fail
            sim.save(args.out.with_suffix(".requests.jsonl"))
        drain(settings)
        topics = {
            s: read_topic(settings, s)
            for s in (Stream.PREDICTIONS, Stream.FEEDBACK, Stream.EXAMPLES)
        }
        for fault in run.faults:
            count(fault, sim, topics)
        restarts = stack.restarts()

    print(
        f"\n{len(sim.requests)} requests at {args.rate:g}/s on {args.nodes} Kafka node(s); "
        f"supervisor restarts: {restarts}\n"
    )
    print(table(run.faults))
    for f in run.faults:
        trigger = f" trigger {f.trigger_id}." if f.trigger_id else ""
        print(f"- {f.name}: {f.how}.{trigger} {' '.join(f.notes)}")
    if args.out:
        args.out.write_text(json.dumps([asdict(f) for f in run.faults], indent=2, default=str))


if __name__ == "__main__":
    main()
