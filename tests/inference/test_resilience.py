"""Broker outages lose nothing; promotions and rollbacks switch models with no failed request."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from refinery.common.events import PredictionEvent
from refinery.common.registry import CHAMPION, ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.common.topics import Stream
from refinery.stack.stack import Stack
from refinery.stack.vllm import adapter_cache_dir
from tests.inference.helpers import (
    ADMIN,
    Load,
    announce,
    complete,
    make_champion,
    read_events,
    register_adapter,
)


def _backlog(settings: Settings) -> float:
    for line in httpx.get(f"{settings.gateway_url}/metrics").text.splitlines():
        if line.startswith("refinery_prediction_log_backlog "):
            return float(line.split()[1])
    raise AssertionError("no backlog gauge")


def test_broker_outage_loses_no_prediction_and_no_acknowledged_feedback(
    stack: Stack, full_stack: Settings
) -> None:
    http = httpx.Client(timeout=60)
    sent = [complete(http, full_stack).json()["id"] for _ in range(10)]

    stack.down(("kafka",))
    try:
        during = [complete(http, full_stack) for _ in range(20)]
        assert all(r.status_code == 200 for r in during), [
            r.text for r in during if r.status_code != 200
        ]
        sent += [r.json()["id"] for r in during]
        assert _backlog(full_stack) >= 20
        started = time.monotonic()
        refused = http.post(
            f"{full_stack.gateway_url}/v1/feedback",
            headers=ADMIN,
            json={"prediction_id": sent[-1], "rating": "up"},
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "5"
        assert time.monotonic() - started < full_stack.feedback_ack_timeout_s + 5
    finally:
        stack.up(("kafka",))

    deadline = time.monotonic() + 120
    while _backlog(full_stack) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _backlog(full_stack) == 0
    # A client honours 503 + Retry-After; the producer reconnects within a few tries.
    deadline = time.monotonic() + 60
    while True:
        accepted = http.post(
            f"{full_stack.gateway_url}/v1/feedback",
            headers=ADMIN,
            json={"prediction_id": sent[-1], "rating": "up"},
        )
        if accepted.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert accepted.status_code == 202, accepted.text
    http.close()

    logged = read_events(full_stack, Stream.PREDICTIONS, set(sent), "prediction_id")
    unique = {e.event_id: e for e in logged if isinstance(e, PredictionEvent)}
    per_id = [e.prediction_id for e in unique.values()]
    assert sorted(per_id) == sorted(sent), "every prediction exactly once after dedup by event_id"


def test_predictions_wait_on_disk_across_a_gateway_restart(
    stack: Stack, full_stack: Settings
) -> None:
    """Kafka down, gateway stopped (gracefully): the outbox keeps the predictions on disk
    and the next gateway sends them."""
    outbox = full_stack.var_dir / "gateway" / f"outbox-{full_stack.gateway_port}.db"
    stack.down(("kafka",))
    try:
        with httpx.Client(timeout=60) as http:
            sent = [complete(http, full_stack).json()["id"] for _ in range(10)]
        assert _backlog(full_stack) >= 10
        stack.down(("gateway",))
        assert not stack._started["gateway"].last_stop_forced
        with sqlite3.connect(outbox) as db:
            waiting = {row[0] for row in db.execute("SELECT key FROM outbox")}
        assert set(sent) <= waiting
    finally:
        stack.up(("kafka",))
        stack.up(("gateway",))
    deadline = time.monotonic() + 120
    while _backlog(full_stack) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    logged = read_events(full_stack, Stream.PREDICTIONS, set(sent), "prediction_id")
    assert {e.prediction_id for e in logged if isinstance(e, PredictionEvent)} == set(sent)


def test_promotion_and_rollback_switch_with_zero_failed_requests(
    full_stack: Settings, tmp_path: Path
) -> None:
    registry = ModelRegistry(full_stack)
    base = registry.get("1")
    adapter = register_adapter(
        full_stack, registry.local_copy(base, tmp_path / "m"), tmp_path / "adapter"
    )
    try:
        with Load(full_stack, threads=6) as load:
            time.sleep(2)
            # Events only say when to look: a version the registry does not have, and one
            # the champion alias does not name, are not served.
            bogus = VersionInfo(adapter.name, "999", "lora", adapter.source, None, "1", {})
            announce(full_stack, bogus, "promoted", previous="1")
            announce(full_stack, adapter, "promoted", previous="1")
            time.sleep(3)
            assert set(load.served) == {full_stack.served_model_name}
            make_champion(full_stack, adapter, "promoted", previous="1")
            load.wait_for(adapter.served_name)
            time.sleep(2)
            make_champion(full_stack, base, "rolled_back", previous=adapter.version)
            load.wait_for(full_stack.served_model_name)
            time.sleep(2)
    finally:
        registry.set_alias(CHAMPION, "1")
    assert load.failures == []
    served = load.served
    switch_at = served.index(adapter.served_name)
    assert served[:switch_at] and set(served[:switch_at]) == {full_stack.served_model_name}
    assert served[-1] == full_stack.served_model_name
    # The old adapter is unloaded from vLLM once its in-flight requests are done.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = [m["id"] for m in httpx.get(f"{full_stack.vllm_url}/v1/models").json()["data"]]
        if adapter.served_name not in names:
            break
        time.sleep(0.5)
    assert adapter.served_name not in names
    models = httpx.get(f"{full_stack.gateway_url}/v1/models", headers=ADMIN).json()["data"]
    assert models[0]["version"] == "1"


def _readyz(settings: Settings) -> httpx.Response:
    return httpx.get(f"{settings.gateway_url}/readyz", timeout=10)


def test_a_vllm_restart_under_a_lora_champion_heals_without_a_gateway_restart(
    stack: Stack, full_stack: Settings, tmp_path: Path
) -> None:
    """vLLM's API server SIGKILLed alone (its engine lives on as an orphan) and started
    again: the orphans are ended, the gateway puts the champion's adapter back, and no
    request fails once vLLM answers again; /readyz is red while the champion is not served."""
    registry = ModelRegistry(full_stack)
    base = registry.get("1")
    adapter = register_adapter(
        full_stack, registry.local_copy(base, tmp_path / "m"), tmp_path / "adapter"
    )
    vllm = stack._started["vllm"]
    try:
        with Load(full_stack, threads=1) as load:
            make_champion(full_stack, adapter, "promoted", previous="1")
            load.wait_for(adapter.served_name)
        assert _readyz(full_stack).status_code == 200

        vllm.kill_leader()
        # The restarted replica fetches the adapter from the registry again, not from a cache.
        shutil.rmtree(adapter_cache_dir(full_stack))
        red = _readyz(full_stack)
        assert red.status_code == 503 and red.json()["vllm"].startswith("unreachable"), red.text
        stack.up(("vllm",))  # ends the orphaned engine first, then starts a fresh server
        names = [m["id"] for m in httpx.get(f"{full_stack.vllm_url}/v1/models").json()["data"]]
        if adapter.served_name not in names:  # the reconcile tick has not run yet
            assert (
                _readyz(full_stack).json()["model"] == f"{adapter.served_name} not loaded in vLLM"
            )

        with httpx.Client(timeout=60) as http:
            after = [complete(http, full_stack) for _ in range(5)]
        assert [r.status_code for r in after] == [200] * 5, [r.text for r in after]
        assert {r.json()["model"] for r in after} == {adapter.served_name}
        assert (adapter_cache_dir(full_stack) / adapter.served_name / ".complete").exists()
        assert _readyz(full_stack).status_code == 200
    finally:
        make_champion(full_stack, base, "rolled_back", previous=adapter.version)
    with httpx.Client(timeout=60) as http:  # the rollback takes effect within a reconcile
        deadline = time.monotonic() + 60
        while True:
            served = complete(http, full_stack).json()["model"]
            if served == full_stack.served_model_name or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert served == full_stack.served_model_name


@pytest.fixture(autouse=True)
def _registry_champion_untouched(full_stack: Settings):  # type: ignore[no-untyped-def]
    yield
    champion = ModelRegistry(full_stack).champion()
    assert champion is not None and champion.version == "1"
