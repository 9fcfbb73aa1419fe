"""The admin API (promote, rollback, canary stop, retrain): the admin scope only, outcomes
as typed bodies, and what goes wrong mapped to 404, 409 and 503.

Refusals are checked on the session's gateway (nothing moves there). The commands themselves
run on a gateway of their own, for a registered model and topics of its own, so no rollback
or retrain touches the session's champion or starts a retraining.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator

import httpx
import pytest

from refinery.common.events import ModelEvent, TriggerEvent
from refinery.common.kafka import EventProducer, RenewingProducer, ensure_topics
from refinery.common.registry import CHAMPION, ModelRegistry
from refinery.common.settings import Settings
from refinery.common.topics import Stream, Topics
from refinery.inference.admin import AdminService
from refinery.inference.exceptions import Unavailable
from refinery.inference.protocol import RollbackRequest, TriggerAccepted
from refinery.stack.stack import Stack
from tests.conftest import API_KEYS
from tests.inference.helpers import read_events

COMMANDS = {
    "promote": {"version": "999", "reason": "test"},
    "rollback": {"reason": "test"},
    "canary/stop": {"reason": "test"},
    "retrain": {"reason": "test", "trigger_id": "never-sent"},
}


def _auth(scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEYS[scope]}"}


@pytest.mark.parametrize("command", COMMANDS)
def test_ops_commands_refuse_no_key_and_keys_without_the_admin_scope(
    full_stack: Settings, command: str
) -> None:
    url = f"{full_stack.gateway_url}/v1/admin/{command}"
    with httpx.Client(timeout=30) as http:
        missing = http.post(url, json=COMMANDS[command])
        assert missing.status_code == 401, missing.text
        assert missing.json()["error"]["type"] == "authentication_error"
        for scope in ("inference", "feedback"):
            refused = http.post(url, json=COMMANDS[command], headers=_auth(scope))
            assert refused.status_code == 403, refused.text
            assert "'admin' scope" in refused.json()["error"]["message"]


def test_the_admin_key_is_let_through_and_an_unknown_version_is_404(full_stack: Settings) -> None:
    missing = httpx.post(
        f"{full_stack.gateway_url}/v1/admin/promote",
        json={"version": "999"},
        headers=_auth("admin"),
        timeout=60,
    )
    assert missing.status_code == 404, missing.text
    assert "version '999' is not registered" in missing.json()["error"]["message"]


@pytest.fixture(scope="module")
def own_gateway(
    full_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """A gateway process for a model of its own (next to the session's, on its Kafka, MLflow and
    vLLM): version 1, the session's base files, is its champion and nothing is 'previous'; its
    events go to the 'admintest' topics."""
    settings = full_stack.model_copy(
        update={
            "registered_model": f"admin-test-{uuid.uuid4().hex[:8]}",
            "topic_prefix": "admintest",
            "var_dir": tmp_path_factory.mktemp("admin-var"),
            "gateway_port": full_stack.gateway_port + 1,
        }
    )
    ensure_topics(settings)
    base = ModelRegistry(full_stack).get("1")
    registry = ModelRegistry(settings)
    registry.register(base.source, base.run_id or "", {"kind": "base"})
    registry.set_alias(CHAMPION, "1")
    stack = Stack(settings)
    stack.up(("gateway",))
    yield settings
    stack.down(("gateway",))


def _admin(settings: Settings, command: str, body: dict[str, str]) -> httpx.Response:
    url = f"{settings.gateway_url}/v1/admin/{command}"
    return httpx.post(url, json=body, headers=_auth("admin"), timeout=60)


def test_promote_answers_with_the_event_it_announced(own_gateway: Settings) -> None:
    done = _admin(own_gateway, "promote", {"version": "1", "reason": "announce"})
    assert done.status_code == 200, done.text
    event = ModelEvent.model_validate(done.json())
    assert (event.model, event.version) == (own_gateway.registered_model, "1")
    assert event.action == "promoted" and event.reasons == ["promoted by hand: announce"]
    [sent] = read_events(own_gateway, Stream.MODELS, {event.event_id}, "event_id")
    assert sent == event
    assert ModelRegistry(own_gateway).champion().version == "1"  # type: ignore[union-attr]


def test_rollback_with_nothing_to_roll_back_to_is_409(own_gateway: Settings) -> None:
    refused = _admin(own_gateway, "rollback", {"reason": "test"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == {
        "message": "nothing to roll back to: no 'previous' alias in the registry",
        "type": "conflict_error",
        "code": 409,
    }


def test_retrain_answers_once_kafka_has_the_trigger(own_gateway: Settings) -> None:
    trigger_id = f"t-admin-{uuid.uuid4().hex[:6]}"
    done = _admin(own_gateway, "retrain", {"reason": "new product line", "trigger_id": trigger_id})
    assert done.status_code == 202, done.text
    accepted = TriggerAccepted.model_validate(done.json())
    assert accepted.trigger_id == trigger_id
    assert accepted.topic == Topics.from_settings(own_gateway).name(Stream.TRIGGERS)
    [trigger] = read_events(own_gateway, Stream.TRIGGERS, {trigger_id}, "trigger_id")
    assert isinstance(trigger, TriggerEvent) and trigger.reason == "new product line"

    unnamed = _admin(own_gateway, "retrain", {"reason": "by hand"})
    assert unnamed.status_code == 202 and unnamed.json()["trigger_id"].startswith("manual-")
    bad = _admin(own_gateway, "retrain", {"reason": "x", "trigger_id": "a'b"})
    assert bad.status_code == 422 and "trigger_id" in bad.json()["error"]["message"]


def test_an_unreachable_registry_is_unavailable_with_retry_after(
    kafka_stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    away = kafka_stack.model_copy(update={"mlflow_uri": f"http://127.0.0.1:{port}"})
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not in minutes
    producer = RenewingProducer(lambda: EventProducer(kafka_stack))
    try:
        with pytest.raises(Unavailable) as refused:
            asyncio.run(AdminService(away, producer, 5).rollback(RollbackRequest()))
    finally:
        producer.close()
    assert refused.value.status_code == 503 and refused.value.retry_after_s == 5
    assert f"the MLflow registry at {away.mlflow_uri} failed" in refused.value.message
