"""The retrainer process (``python -m refinery.retrainer``; ``refinery up`` starts it): a
kafka-python consumer of ``refinery.triggers`` that runs the pipeline once per trigger.

Triggers are handled one at a time; those that arrive during a run wait in Kafka. When
several are waiting, the newest one runs and the others are coalesced into it (they would
train on a subset of the same data). A monitor trigger raised against an older champion
than the one now serving is stale and skipped: the drift it saw was already answered.
The offset is committed only after the run has recorded its outcome, so a crash replays
the trigger and the pipeline's idempotency (refinery/retrainer/pipeline.py) resumes it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

import requests
from kafka.errors import KafkaError
from mlflow.exceptions import MlflowException

from refinery.common.events import TriggerEvent
from refinery.common.kafka import EventConsumer
from refinery.common.metrics import serve_metrics
from refinery.common.registry import ModelRegistry
from refinery.common.settings import Settings, get_settings
from refinery.common.task import TaskFile, load_task
from refinery.common.topics import Stream
from refinery.retrainer.metrics import RetrainerMetrics

if TYPE_CHECKING:
    from refinery.retrainer.pipeline import Retrainer

log = logging.getLogger(__name__)

GROUP_ID = "refinery-retrainer"
READY = "retrainer: ready"
CHAMPION_LOOK_S = 30.0  # how often the champion gauge reads the registry between runs
# MLflow or the network away: the trigger is not committed, so it runs again once they are
# back (the run resumes). Anything else is a fault of this trigger: recorded, then skipped.
TRANSIENT = (
    KafkaError,
    MlflowException,
    requests.exceptions.RequestException,
    ConnectionError,
    TimeoutError,
)


def pick(triggers: list[TriggerEvent], champion_version: str | None) -> TriggerEvent | None:
    """The trigger to run from a batch that waited: the newest one that is not stale."""
    fresh = [
        t
        for t in triggers
        if t.requested_by != "monitor"
        or t.evidence.get("reference_version") in (None, champion_version)
    ]
    for t in triggers:
        if t not in fresh:
            log.info(
                "trigger %s: stale (drift seen on v%s, champion is now v%s); skipped",
                t.trigger_id,
                t.evidence.get("reference_version"),
                champion_version,
            )
    if not fresh:
        return None
    chosen = fresh[-1]
    for t in fresh[:-1]:
        log.info("trigger %s: coalesced into %s", t.trigger_id, chosen.trigger_id)
    return chosen


def cpu_threads(settings: Settings) -> int:
    """Training threads on a CPU host. The retrainer shares the host with vLLM and the
    gateway; two torch threads that keep losing their core to them wait on each other at
    every op (measured here: eval 100x slower than alone), one thread just runs slower."""
    if settings.retrainer_threads:
        return settings.retrainer_threads
    return max(1, (os.cpu_count() or 2) // 2)


def serve(settings: Settings, stop: threading.Event) -> None:
    import torch

    from refinery.common.promotion import reconcile

    if not torch.cuda.is_available():
        torch.set_num_threads(cpu_threads(settings))
        log.info("retrainer: training on the CPU with %d thread(s)", torch.get_num_threads())
    else:
        log.info(
            "retrainer: training on %s (%s)",
            torch.cuda.get_device_name(),
            "bf16" if torch.cuda.is_bf16_supported() else "float32",
        )

    task = load_task(settings.task_file)
    metrics = RetrainerMetrics()
    serve_metrics(
        metrics.registry, settings.metrics_host, settings.retrainer_metrics_port, "retrainer"
    )
    retrainer = _connected(settings, task, stop)
    if retrainer is None:
        return
    registry = ModelRegistry(settings)
    ready = False
    backoff = 5.0
    looked = 0.0  # when the champion gauge was last read from the registry
    while not stop.is_set():
        try:
            reconcile(settings)
            with EventConsumer(
                settings,
                [Stream.TRIGGERS],
                group_id=GROUP_ID,
                max_poll_interval_ms=6 * 3600 * 1000,  # a training run holds the poll loop
                # Heartbeats run in the background during a run; a killed retrainer's
                # membership lapses after this, and its replacement takes the uncommitted
                # trigger over.
                session_timeout_ms=10_000,
                heartbeat_interval_ms=3_000,
            ) as consumer:
                if not ready:
                    log.info(READY)
                    ready = True
                while not stop.is_set():
                    batch = consumer.poll(timeout_ms=1000)
                    triggers = [r.event for r in batch if isinstance(r.event, TriggerEvent)]
                    if triggers:
                        champion = registry.champion()
                        chosen = pick(triggers, champion.version if champion else None)
                        if chosen is not None:
                            run_once(retrainer, chosen, metrics)
                            looked = 0.0  # the run may have moved the champion
                    if batch:
                        consumer.commit()
                    if time.monotonic() - looked > CHAMPION_LOOK_S:  # ops may promote too
                        champion = registry.champion()
                        metrics.champion(champion.version if champion else None)
                        looked = time.monotonic()
            backoff = 5.0
        except TRANSIENT as exc:
            # Kafka, MLflow or the network went away: nothing was committed past the last
            # finished trigger, so a new consumer picks up where this one stopped.
            log.warning("retrainer: %s (%s); retrying in %.0f s", type(exc).__name__, exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 60.0)


def _connected(settings: Settings, task: TaskFile, stop: threading.Event) -> Retrainer | None:
    """The pipeline, once MLflow answers (it may start after us, or be restarting)."""
    from refinery.retrainer.pipeline import Retrainer  # heavy: mlflow, torch, transformers

    wait = 2.0
    while not stop.is_set():
        try:
            return Retrainer(settings, task, stop)
        except TRANSIENT as exc:
            log.warning("retrainer: MLflow not reachable (%s); retrying in %.0f s", exc, wait)
            stop.wait(wait)
            wait = min(wait * 2, 30.0)
    return None


def run_once(retrainer: Retrainer, trigger: TriggerEvent, metrics: RetrainerMetrics) -> None:
    """Run one trigger; a failure that retrying cannot fix is recorded and the trigger is
    let go, so one bad trigger does not stop every later one."""
    metrics.running.set(1)
    try:
        outcome = retrainer.run(trigger)
        metrics.run_ended(outcome.status, outcome.timings)
    except TRANSIENT:
        raise
    except Exception as exc:
        log.exception("trigger %s: failed; recorded and skipped", trigger.trigger_id)
        retrainer.record_failure(trigger, exc)
        metrics.run_ended("failed", None)
    finally:
        metrics.running.set(0)


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # MLflow's client retries a refused connection for minutes on its own; fail sooner and
    # let the service's loop wait (and log) instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(get_settings(), stop)
