"""What ops are told of a decision: which model events are decisions, how each reads."""

from __future__ import annotations

from refinery.common.decisions import decision, lines, of_model_event, webhook_payload
from refinery.common.events import ModelEvent


def model_event(action: str, **fields: object) -> ModelEvent:
    return ModelEvent(
        model="m",
        version="3",
        action=action,  # type: ignore[arg-type]
        served_name="m-v3",
        artifact_uri="file:///a",
        kind="lora",
        previous_version="2",
        **fields,  # type: ignore[arg-type]
    )


def test_every_model_event_but_evaluated_is_a_decision_with_its_severity() -> None:
    assert of_model_event(model_event("evaluated"), None) is None
    seen = {}
    for action in ("promoted", "rejected", "rolled_back", "canary_started", "canary_stopped"):
        told = of_model_event(model_event(action, reasons=["why"]), "http://run")
        assert told is not None and told.action == action and told.version == "3"
        assert told.reasons == ["why"] and told.run_url == "http://run"
        seen[action] = told.severity
    assert seen == {
        "promoted": "info",
        "rejected": "warning",
        "rolled_back": "warning",
        "canary_started": "info",
        "canary_stopped": "warning",
    }
    rolled_back = of_model_event(model_event("rolled_back"), None)
    assert rolled_back is not None and rolled_back.summary == "rolled back to v3 (from v2)"


def test_a_decision_reads_as_a_headline_its_reasons_and_its_run() -> None:
    failed = decision(
        "retraining_failed",
        "m",
        "retraining failed; the champion keeps serving",
        trigger_id="drift-v1-x",
        run_url="http://mlflow/#/experiments/1/runs/r",
        reasons=["ValueError: no examples"],
    )
    assert failed.severity == "critical"
    assert lines(failed) == [
        "CRITICAL retraining failed: m retraining failed; the champion keeps serving "
        "[trigger drift-v1-x]",
        "    ValueError: no examples",
        "    run: http://mlflow/#/experiments/1/runs/r",
    ]
    text = str(webhook_payload(failed)["text"])
    assert text.startswith(":rotating_light: CRITICAL") and text.endswith("/runs/r")
    restarted = decision("process_restarted", "monitor", "was down; started again (attempt 1)")
    assert lines(restarted) == [
        "WARNING process restarted: monitor was down; started again (attempt 1)"
    ]
