"""The canary step: start the canary, tally live ratings of both arms from the examples
topic, and promote or roll back at the sequential test's verdict (``canary.py``), the
budget, or an operator's move.

Live mode: the examples the monitor joins carry the version that answered, so the arms
are told apart by version; each rating counts once (the latest per feedback id, as in
training), and reviewers' labels are not users' thumbs. Shadow mode: users only rated the
champion's answers; the canary's answer to the same request (on the predictions topic,
``shadow_of`` the shown one) is judged by what the rating says of the right answer: the
champion's answer when it got a thumbs-up, the user's correction, or (thumbs-down without
one) wrong when it is the champion's wrong answer again, unknown otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import mlflow
from kafka import KafkaConsumer, TopicPartition
from mlflow import MlflowClient
from pydantic import BaseModel, ValidationError

from refinery.common.events import ExampleEvent, PredictionEvent, parse_versioned
from refinery.common.promotion import promote, start_canary, stop_canary
from refinery.common.registry import ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.common.task import CanarySpec, TaskFile
from refinery.common.topics import Stream, Topics
from refinery.retrainer.canary import ArmCounts, Interval, decide, interval
from refinery.retrainer.collect import end_offsets
from refinery.retrainer.evaluation import item_scores
from refinery.retrainer.gate import main_metric

log = logging.getLogger(__name__)

Ending = Literal["promote", "rollback", "superseded", "stopped"]
CANARY_TAG = "refinery.canary"  # on the run: where the canary's evidence starts


class CanaryStart(BaseModel):
    """Recorded on the run before the canary starts, so a restart resumes the same watch."""

    schema_version: Literal[1] = 1
    offsets: dict[int, int]  # examples topic partition -> offset when the canary started
    prediction_offsets: dict[int, int] = {}  # the same for predictions (shadow mode)
    started_at: float  # epoch seconds
    champion_version: str


Arm = Literal["champion", "canary"]


@dataclass
class Tally:
    """Thumbs per arm, each rating counted once: a re-rating replaces the earlier one."""

    champion_version: str
    canary_version: str
    champion: ArmCounts = field(default_factory=ArmCounts)
    canary: ArmCounts = field(default_factory=ArmCounts)
    _latest: dict[tuple[Arm, str], bool] = field(default_factory=dict)

    def add(self, example: ExampleEvent) -> bool:
        """Count a user's thumb on an answer of either arm; False when it is not one."""
        if example.label_source != "user":
            return False
        arms: dict[str, Arm] = {self.champion_version: "champion", self.canary_version: "canary"}
        arm = arms.get(example.model_version)
        if arm is None:
            return False
        return self.count(arm, example.feedback_id, example.rating == "up")

    def count(self, arm: Arm, feedback_id: str, up: bool) -> bool:
        """One verdict for ``arm``; a later one for the same feedback id replaces it."""
        earlier = self._latest.get((arm, feedback_id))
        if earlier == up:
            return False  # the same rating again (a redelivery or a repeat)
        if earlier is not None:
            self._shift(arm, earlier, -1)
        self._latest[(arm, feedback_id)] = up
        self._shift(arm, up, +1)
        return True

    def _shift(self, arm: Arm, up: bool, by: int) -> None:
        counts = self.canary if arm == "canary" else self.champion
        moved = ArmCounts(counts.up + by * up, counts.down + by * (not up))
        if arm == "canary":
            self.canary = moved
        else:
            self.champion = moved


class ShadowJudge:
    """What a user's rating of the champion's answer says of the shadow canary's answer."""

    def __init__(self, task: TaskFile) -> None:
        self.task = task.task
        self.metric = main_metric(task)

    def _close(self, target: str, output: str) -> bool:
        """Right by the gate's own rule for an item (a 0-1 score of 0.5 or more)."""
        return item_scores(self.task, self.metric, [target], [output])[0] >= 0.5

    def __call__(self, rated: ExampleEvent, shadow: str) -> bool | None:
        if rated.correction is not None and rated.correction.strip():
            return self._close(rated.correction, shadow)
        if rated.rating == "up":
            return self._close(rated.completion, shadow)
        return False if self._close(rated.completion, shadow) else None


@dataclass(frozen=True)
class CanaryResult:
    """How a canary ended and the evidence at that moment."""

    ending: Ending
    champion: ArmCounts
    canary: ArmCounts
    interval: Interval
    seconds: float

    def reason(self) -> str:
        ci = self.interval
        return (
            f"canary {self.ending} after {self.seconds:.0f} s: thumbs-up "
            f"{self.canary.up}/{self.canary.n} on the canary vs "
            f"{self.champion.up}/{self.champion.n} on the champion, difference "
            f"{ci.estimate:+.3f} (always-valid interval {ci.low:+.3f}..{ci.high:+.3f})"
        )

    def metrics(self) -> dict[str, float]:
        return {
            "canary_seconds": self.seconds,
            "canary_ratings": float(self.canary.n),
            "canary_champion_ratings": float(self.champion.n),
            "canary_thumbs_up_rate": self.canary.rate(),
            "canary_champion_thumbs_up_rate": self.champion.rate(),
            "canary_difference": self.interval.estimate,
            "canary_ci_low": self.interval.low,
            "canary_ci_high": self.interval.high,
        }


class Evidence:
    """Feeds the tally from the records read: examples, and in shadow mode the canary's
    unseen answers, paired with the rated example of the request they shadowed."""

    def __init__(self, tally: Tally, judge: ShadowJudge | None) -> None:
        self.tally = tally
        self.judge = judge
        self.shadows: dict[str, str] = {}  # shown prediction id -> the canary's answer
        self.rated: dict[str, ExampleEvent] = {}  # shown prediction id -> its latest example

    def example(self, example: ExampleEvent) -> None:
        if not self.tally.add(example) or self.judge is None:
            return
        self.rated[example.prediction_id] = example
        self._pair(example.prediction_id)

    def prediction(self, prediction: PredictionEvent) -> None:
        shown = prediction.shadow_of
        if self.judge is None or shown is None:
            return
        if prediction.model_version != self.tally.canary_version:
            return
        self.shadows[shown] = prediction.completion
        self._pair(shown)

    def _pair(self, shown: str) -> None:
        rated, shadow = self.rated.get(shown), self.shadows.get(shown)
        if rated is None or shadow is None or self.judge is None:
            return
        verdict = self.judge(rated, shadow)
        if verdict is not None:
            self.tally.count("canary", rated.feedback_id, verdict)


def watch(
    settings: Settings,
    policy: CanarySpec,
    evidence: Evidence,
    start: CanaryStart,
    still_running: Callable[[], bool],
    stop: threading.Event,
) -> CanaryResult:
    """Read from ``start`` until the verdict, the budget, or ``stop``. ``still_running``
    (the registry's canary alias still names this canary) is asked every few seconds: an
    operator who promoted or stopped it by hand ends the watch as ``superseded``."""
    topics = Topics.from_settings(settings)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None
    )
    tally = evidence.tally
    checked = 0.0

    def result(ending: Ending) -> CanaryResult:
        ci = interval(tally.champion, tally.canary, policy)
        return CanaryResult(
            ending, tally.champion, tally.canary, ci, time.time() - start.started_at
        )

    try:
        where = {Stream.EXAMPLES: start.offsets}
        if evidence.judge is not None:
            where[Stream.PREDICTIONS] = start.prediction_offsets
        partitions = [
            TopicPartition(topics.name(stream), p)
            for stream in where
            for p in consumer.partitions_for_topic(topics.name(stream)) or ()
        ]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, where[topics.stream_of(tp.topic)].get(tp.partition, 0))
        while not stop.is_set():
            for tp, records in consumer.poll(timeout_ms=1000).items():
                stream = topics.stream_of(tp.topic)
                for record in records:
                    kind = ExampleEvent if stream == Stream.EXAMPLES else PredictionEvent
                    try:
                        event = parse_versioned(kind, record.value or b"")
                    except ValidationError:
                        continue
                    if isinstance(event, ExampleEvent):
                        evidence.example(event)
                    elif isinstance(event, PredictionEvent):
                        evidence.prediction(event)
            verdict = decide(tally.champion, tally.canary, policy)
            if verdict != "continue":
                return result(verdict)
            if time.time() - start.started_at >= policy.max_minutes * 60:
                log.info("canary: out of time, undecided")
                return result("rollback")
            if time.monotonic() - checked > 5:
                checked = time.monotonic()
                if not still_running():
                    return result("superseded")
                log.info(
                    "canary: %d/%d up on the canary, %d/%d on the champion",
                    tally.canary.up,
                    tally.canary.n,
                    tally.champion.up,
                    tally.champion.n,
                )
        return result("stopped")
    finally:
        consumer.close()


def run_canary(
    settings: Settings,
    task: TaskFile,
    run_id: str,
    info: VersionInfo,
    reasons: list[str],
    metrics: dict[str, float],
    stop: threading.Event,
) -> tuple[str, list[str]]:
    """Serve ``info`` to ``task.canary.share`` of users, watch, act on the ending; the
    run's outcome (promoted, rejected, or interrupted when shutting down) and its reasons."""
    spec = task.canary
    registry = ModelRegistry(settings)
    recorded = MlflowClient(tracking_uri=settings.mlflow_uri).get_run(run_id).data.tags
    if CANARY_TAG in recorded:
        start = CanaryStart.model_validate_json(recorded[CANARY_TAG])
    else:
        champion = registry.champion()
        if champion is None:
            raise RuntimeError("no champion to run a canary beside")
        start = CanaryStart(
            offsets=end_offsets(settings),
            prediction_offsets=end_offsets(settings, Stream.PREDICTIONS),
            started_at=time.time(),
            champion_version=champion.version,
        )
        mlflow.set_tag(CANARY_TAG, start.model_dump_json())
    running = registry.canary()
    if running is None or running.version != info.version:
        start_canary(settings, info, spec.share, metrics, reasons, mode=spec.mode)

    def still_running() -> bool:
        now = registry.canary()
        return now is not None and now.version == info.version

    judge = ShadowJudge(task) if spec.mode == "shadow" else None
    evidence = Evidence(Tally(start.champion_version, info.version), judge)
    result = watch(settings, spec, evidence, start, still_running, stop)
    why = [*reasons, result.reason()]
    if result.ending == "stopped":  # shutting down: no outcome, the run resumes later
        return "interrupted", why
    mlflow.log_metrics(result.metrics())
    if result.ending == "promote":
        promote(settings, info.version, metrics=result.metrics(), reasons=why)
        return "promoted", why
    if result.ending == "rollback":
        stop_canary(settings, info, result.metrics(), why)
        return "rejected", why
    champion = registry.champion()  # superseded: an operator promoted or stopped it
    why.append("ended by an operator")
    promoted = champion is not None and champion.version == info.version
    return ("promoted" if promoted else "rejected"), why
