"""Promotion, rejection, rollback and canaries: alias moves in the registry plus an event
on ``refinery.models``. The retrainer's gate and canary judge and the ``refinery
promote``/``rollback`` commands take this same path.

Order matters for crashes: ``previous`` moves first, then ``champion``, then the event.
A crash between the alias moves leaves champion where it was (never half-moved); a crash
before the event is repaired by :func:`reconcile`, which the retrainer runs on start: if
the last promotion event on the topic does not name the registry's champion, it announces
the champion again (the gateway's switch is idempotent).
"""

from __future__ import annotations

import logging

from kafka import KafkaConsumer, TopicPartition
from pydantic import ValidationError

from refinery.common import decisions
from refinery.common.events import ModelEvent
from refinery.common.exceptions import RegistryError
from refinery.common.kafka import EventProducer
from refinery.common.registry import (
    CANARY,
    CANARY_MODE_TAG,
    CANARY_SHARE_TAG,
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    ModelRegistry,
    VersionInfo,
)
from refinery.common.settings import Settings
from refinery.common.topics import Stream, Topics

log = logging.getLogger(__name__)


def model_event(
    info: VersionInfo,
    action: str,
    previous: str | None,
    metrics: dict[str, float] | None = None,
    reasons: list[str] | None = None,
) -> ModelEvent:
    """The models topic's record of ``action`` on ``info`` (``previous``: the version before)."""
    return ModelEvent(
        model=info.name,
        version=info.version,
        action=action,  # type: ignore[arg-type]
        served_name=info.served_name,
        artifact_uri=info.source,
        kind=info.kind,  # type: ignore[arg-type]
        base_version=info.base_version,
        previous_version=previous,
        metrics=metrics or {},
        reasons=reasons or [],
    )


def announce(settings: Settings, event: ModelEvent) -> None:
    """The event on the models topic (servers and the monitor act on it), then the
    decision told to ops with a link to the run that made the version."""
    with EventProducer(settings) as producer:
        producer.send_and_wait(Stream.MODELS, event, key=event.model)
    told = decisions.of_model_event(event, _run_url(settings, event))
    if told is not None:
        decisions.tell(settings, told)


def _run_url(settings: Settings, event: ModelEvent) -> str | None:
    """The MLflow run behind ``event``'s version (None if the registry cannot say now)."""
    try:
        registry = ModelRegistry(settings)
        run_id = registry.get(event.version).run_id
        if not run_id:
            return None
        experiment = registry.client.get_run(run_id).info.experiment_id
    except Exception as exc:  # the decision is told without its link rather than not at all
        log.warning("no run link for v%s: %s", event.version, exc)
        return None
    return decisions.run_url(settings.mlflow_uri, experiment, run_id)


def promote(
    settings: Settings,
    version: str,
    metrics: dict[str, float] | None = None,
    reasons: list[str] | None = None,
) -> ModelEvent:
    """Make ``version`` the champion; the old champion becomes ``previous``."""
    registry = ModelRegistry(settings)
    info = registry.get(version)
    current = registry.champion()
    if current is not None and current.version == version:
        log.info("promote: v%s is already champion; announcing it again", version)
        previous = registry.by_alias(PREVIOUS)
        event = model_event(
            info, "promoted", previous.version if previous else None, metrics, reasons
        )
        announce(settings, event)
        return event
    if (
        current is not None
        and registry.serving_base(info).version != registry.serving_base(current).version
    ):
        raise RegistryError(
            f"v{version} applies to a different base model than champion v{current.version}"
        )
    if current is not None:
        registry.set_alias(PREVIOUS, current.version)
    registry.set_alias(CHAMPION, version)
    registry.client.set_model_version_tag(registry.name, version, "status", "champion")
    canary = registry.canary()
    if canary is not None and canary.version == version:
        registry.delete_alias(CANARY)  # it serves everyone now
    event = model_event(info, "promoted", current.version if current else None, metrics, reasons)
    announce(settings, event)
    log.info("promote: v%s is champion (previous v%s)", version, current and current.version)
    return event


def rollback(settings: Settings) -> ModelEvent:
    """Champion back to ``previous``; the rolled-back version becomes ``previous``."""
    registry = ModelRegistry(settings)
    previous = registry.by_alias(PREVIOUS)
    current = registry.champion()
    if previous is None or current is None:
        raise RegistryError("nothing to roll back to: no 'previous' alias in the registry")
    registry.set_alias(PREVIOUS, current.version)
    registry.set_alias(CHAMPION, previous.version)
    event = model_event(previous, "rolled_back", current.version)
    announce(settings, event)
    log.info("rollback: champion v%s -> v%s", current.version, previous.version)
    return event


def reject(
    settings: Settings, info: VersionInfo, metrics: dict[str, float], reasons: list[str]
) -> ModelEvent:
    registry = ModelRegistry(settings)
    registry.client.set_model_version_tag(registry.name, info.version, "status", "rejected")
    registry.client.set_model_version_tag(
        registry.name, info.version, "rejected_because", "; ".join(reasons)[:5000]
    )
    champion = registry.champion()
    event = model_event(info, "rejected", champion.version if champion else None, metrics, reasons)
    announce(settings, event)
    return event


def start_canary(
    settings: Settings,
    info: VersionInfo,
    share: float,
    metrics: dict[str, float] | None = None,
    reasons: list[str] | None = None,
    mode: str = "live",
) -> ModelEvent:
    """Serve ``info`` to ``share`` of users beside the champion (sticky per user); in
    ``shadow`` mode it answers their requests too, but they get the champion's answer."""
    if not 0 < share < 1:
        raise ValueError(f"a canary's share of traffic is between 0 and 1, not {share}")
    registry = ModelRegistry(settings)
    champion = registry.champion()
    if champion is None or champion.version == info.version:
        raise RegistryError(f"v{info.version} cannot be a canary: it is the champion or none is")
    if registry.serving_base(info).version != registry.serving_base(champion).version:
        raise RegistryError(
            f"v{info.version} applies to a different base model than champion v{champion.version}"
        )
    tag = registry.client.set_model_version_tag
    tag(registry.name, info.version, CANARY_SHARE_TAG, f"{share:g}")
    tag(registry.name, info.version, CANARY_MODE_TAG, mode)
    tag(registry.name, info.version, "status", "canary")
    registry.set_alias(CANARY, info.version)
    event = model_event(
        info, "canary_started", champion.version, {**(metrics or {}), "share": share}, reasons
    )
    announce(settings, event)
    log.info(
        "canary (%s): v%s answers %.0f%% of users beside v%s",
        mode,
        info.version,
        share * 100,
        champion.version,
    )
    return event


def stop_canary(
    settings: Settings, info: VersionInfo, metrics: dict[str, float], reasons: list[str]
) -> ModelEvent:
    """Take ``info`` off live traffic (rejected); the champion answers everyone again."""
    registry = ModelRegistry(settings)
    canary = registry.canary()
    if canary is not None and canary.version == info.version:
        registry.delete_alias(CANARY)
    tag = registry.client.set_model_version_tag
    tag(registry.name, info.version, "status", "rejected")
    tag(registry.name, info.version, "rejected_because", "; ".join(reasons)[:5000])
    champion = registry.champion()
    event = model_event(
        info, "canary_stopped", champion.version if champion else None, metrics, reasons
    )
    announce(settings, event)
    log.info("canary: v%s stopped (%s)", info.version, "; ".join(reasons))
    return event


def stop_running_canary(settings: Settings, reasons: list[str]) -> ModelEvent:
    """Ops: stop whichever version is the canary now (the retrainer's watch sees it gone)."""
    canary = ModelRegistry(settings).canary()
    if canary is None:
        raise RegistryError("no canary is running")
    return stop_canary(settings, canary, {}, reasons)


def mark_challenger(settings: Settings, info: VersionInfo) -> None:
    ModelRegistry(settings).set_alias(CHALLENGER, info.version)


def last_switch(settings: Settings) -> ModelEvent | None:
    """The newest promoted/rolled_back event on the models topic, if any."""
    topic = Topics.from_settings(settings).name(Stream.MODELS)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    latest: ModelEvent | None = None
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    try:
                        event = ModelEvent.model_validate_json(record.value or b"")
                    except ValidationError:
                        continue
                    if event.switches_champion and (
                        latest is None or event.occurred_at > latest.occurred_at
                    ):
                        latest = event
    finally:
        consumer.close()
    return latest


def reconcile(settings: Settings) -> ModelEvent | None:
    """Announce the registry's champion if the topic's last switch names another version."""
    registry = ModelRegistry(settings)
    champion = registry.champion() if registry.exists() else None
    if champion is None:
        return None
    last = last_switch(settings)
    if last is None and champion.kind == "base":
        return None  # the bootstrap champion: the gateway starts on it without an event
    if last is not None and last.version == champion.version:
        return None
    previous = registry.by_alias(PREVIOUS)
    log.warning(
        "reconcile: champion is v%s but the last switch event names %s; announcing v%s",
        champion.version,
        f"v{last.version}" if last else "none",
        champion.version,
    )
    event = model_event(champion, "promoted", previous.version if previous else None)
    announce(settings, event)
    return event
