"""Decisions ops hear about, told once on ``refinery.decisions`` by whoever decided.

The retrainer tells a retraining started or failed, the promotion path (gate, canary
judge, ``refinery promote``/``rollback``) a promotion, rejection, rollback or canary, the
supervisor a restart. The monitor posts each one to the webhook (one place holds the
webhook, and a decision made while it is down is posted when it is back: Kafka keeps it);
``refinery alerts`` prints them beside the drift alerts.

Telling is best effort: the decision is made and recorded (registry, MLflow, restarts
file) whether or not the broker takes its notice, so a failed send is logged, never raised.
"""

from __future__ import annotations

import logging
from typing import Any

from refinery.common.events import DecisionEvent, ModelEvent
from refinery.common.settings import Settings
from refinery.common.topics import Stream

log = logging.getLogger(__name__)

_SEVERITY = {
    "retraining_started": "info",
    "retraining_failed": "critical",
    "promoted": "info",
    "rejected": "warning",
    "rolled_back": "warning",
    "canary_started": "info",
    "canary_stopped": "warning",
    "process_restarted": "warning",
    "process_restart_failed": "critical",
}
_ICON = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


def decision(action: str, subject: str, summary: str, **fields: Any) -> DecisionEvent:
    """A decision with its action's severity."""
    return DecisionEvent(
        action=action,  # type: ignore[arg-type]
        subject=subject,
        summary=summary,
        severity=_SEVERITY[action],  # type: ignore[arg-type]
        **fields,
    )


def of_model_event(event: ModelEvent, run_url: str | None) -> DecisionEvent | None:
    """What ops hear of a model event (None for ``evaluated``: no decision yet)."""
    if event.action == "evaluated":
        return None
    v, previous = f"v{event.version}", f"v{event.previous_version or '-'}"
    summary = {
        "promoted": f"{v} promoted to champion (previous {previous})",
        "rejected": f"{v} rejected; champion {previous} keeps serving",
        "rolled_back": f"rolled back to {v} (from {previous})",
        "canary_started": f"{v} is a canary beside champion {previous}",
        "canary_stopped": f"canary {v} stopped; champion {previous} answers everyone",
    }[event.action]
    return decision(
        event.action,
        event.model,
        summary,
        version=event.version,
        run_url=run_url,
        reasons=list(event.reasons),
    )


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI."""
    return f"{tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"


def tell(settings: Settings, event: DecisionEvent, timeout_s: float = 10.0) -> bool:
    """Send ``event`` on the decisions topic; False (logged) if the broker did not take it."""
    from refinery.common.kafka import EventProducer  # kafka-python: not for pure callers

    try:
        with EventProducer(settings, max_block_ms=int(timeout_s * 1000)) as producer:
            producer.send_and_wait(Stream.DECISIONS, event, key=event.subject, timeout_s=timeout_s)
    except Exception as exc:  # a notice lost is logged; the decision itself stands
        log.warning("decision %s of %s not told: %s", event.action, event.subject, exc)
        return False
    return True


def lines(event: DecisionEvent) -> list[str]:
    """The decision for people: a headline, its reasons, the run (CLI and webhook)."""
    head = f"{event.severity.upper()} {event.action.replace('_', ' ')}: {event.subject} "
    head += event.summary + (f" [trigger {event.trigger_id}]" if event.trigger_id else "")
    out = [head] + [f"    {reason}" for reason in event.reasons]
    if event.run_url:
        out.append(f"    run: {event.run_url}")
    return out


def webhook_payload(event: DecisionEvent) -> dict[str, Any]:
    head, *rest = lines(event)
    return {"text": "\n".join([f"{_ICON[event.severity]} {head}", *rest])}
