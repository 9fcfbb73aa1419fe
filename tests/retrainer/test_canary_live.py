"""Canaries on the running stack: simulated users' thumbs on both arms roll a bad canary
back and promote a good one, and no request fails on the way.

The canary step runs here as the retrainer runs it after a passed gate (``run_canary``);
every process it talks to is real: the gateway routes the canary's share of users to the
adapter in vLLM, the monitor joins their ratings into examples, the registry decides.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import mlflow
import pytest

from refinery.common.events import ModelEvent, PredictionEvent
from refinery.common.promotion import promote
from refinery.common.registry import ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.common.task import CanarySpec, load_task
from refinery.common.topics import Stream
from refinery.demo.simulate import Simulation, SimulationConfig, simulate
from refinery.inference.router import in_canary
from refinery.inference.routes.completions import ARM_HEADER
from refinery.retrainer.canary_watch import run_canary
from tests.conftest import API_KEYS, run_cli
from tests.inference.helpers import (
    read_events,
    register_adapter,
    serve_the_base_again,
    wait_served,
)

SPEC = CanarySpec(share=0.5, min_per_arm=25, max_minutes=4)
HEADERS = {"Authorization": f"Bearer {API_KEYS['admin']}"}


@contextmanager
def _traffic(settings: Settings) -> Iterator[list[Simulation]]:
    """The demo's users on the old product line (the champion's home ground), every answer
    rated at once; the simulation is in the list once the block ends."""
    task = load_task(settings.task_file).task
    config = SimulationConfig(
        rate=8,
        shift_at_s=1e9,
        max_duration_s=900,
        rated_share=1.0,
        late_share=0.0,
        correction_share=0.0,
        concurrency=8,
        seed=3,
    )
    stop = threading.Event()
    done: list[Simulation] = []

    def run() -> None:
        done.append(
            asyncio.run(
                simulate(
                    settings.gateway_url,
                    API_KEYS["admin"],
                    settings.registered_model,
                    task,
                    config,
                    done=lambda _: stop.is_set(),
                )
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=120)


def _run_canary(
    settings: Settings, info: VersionInfo, spec: CanarySpec = SPEC
) -> tuple[str, list[str]]:
    task = load_task(settings.task_file).model_copy(update={"canary": spec})
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run(run_name=f"test canary v{info.version}") as run:
        return run_canary(
            settings, task, run.info.run_id, info, ["gate passed"], {}, threading.Event()
        )


def _answer(settings: Settings, user: str) -> httpx.Response:
    return httpx.post(
        f"{settings.gateway_url}/v1/completions",
        headers=HEADERS,
        json={
            "model": settings.registered_model,
            "prompt": "Ticket: my parcel is late\nTeam:",
            "max_tokens": 3,
            "user": user,
        },
        timeout=60,
    )


@pytest.fixture
def adapters(full_stack: Settings, tmp_path: Path) -> Iterator[tuple[VersionInfo, VersionInfo]]:
    """A bad adapter (random weights) and a good one (the base's answers), champion v1
    again afterwards."""
    registry = ModelRegistry(full_stack)
    base_dir = registry.local_copy(registry.get("1"), tmp_path / "m")
    bad = register_adapter(full_stack, base_dir, tmp_path / "bad")
    good = register_adapter(full_stack, base_dir, tmp_path / "good", identity=True)
    yield bad, good
    serve_the_base_again(full_stack, "canary tests done: the base serves again")


def test_a_canary_worse_live_is_rolled_back_with_no_failed_request(
    full_stack: Settings, adapters: tuple[VersionInfo, VersionInfo]
) -> None:
    bad, _ = adapters
    inside = next(u for u in (f"probe-{i}" for i in range(100)) if in_canary(u, bad.version, 0.5))
    outside = next(
        u for u in (f"probe-{i}" for i in range(100)) if not in_canary(u, bad.version, 0.5)
    )
    with _traffic(full_stack) as done, ThreadPoolExecutor(1) as pool:
        time.sleep(3)
        started = time.time()
        judging = pool.submit(_run_canary, full_stack, bad)
        deadline = time.monotonic() + 60
        while True:  # the gateway follows the canary_started event
            r = _answer(full_stack, inside)
            if r.headers[ARM_HEADER] == "canary" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # Sticky: this user gets the canary each time; another user the champion.
        assert [_answer(full_stack, inside).json()["model"] for _ in range(3)] == [
            bad.served_name
        ] * 3
        r = _answer(full_stack, outside)
        assert (r.headers[ARM_HEADER], r.json()["model"]) == (
            "champion",
            full_stack.served_model_name,
        )
        status, why = judging.result(timeout=300)
        decided = time.time()
        time.sleep(4)
    sim = done[0]
    print(f"bad canary: {why[-1]}; {len(sim.requests)} requests")
    assert status == "rejected", why
    assert "canary rollback" in why[-1], why
    registry = ModelRegistry(full_stack)
    assert registry.canary() is None
    assert registry.get(bad.version).tags["status"] == "rejected"
    # No request failed, the canary answered its share, and none once it was stopped.
    assert [r.error for r in sim.requests if r.status != "ok"] == []
    on_canary = [r for r in sim.requests if r.version == bad.served_name]
    assert on_canary and min(r.t for r in on_canary) >= 0
    after = [r for r in sim.requests if r.t + sim.started_at > decided + 2]
    assert after and {r.version for r in after} == {full_stack.served_model_name}
    events = read_events(full_stack, Stream.MODELS, {bad.version}, "version", timeout_s=20)
    actions = [
        e.action
        for e in events
        if isinstance(e, ModelEvent) and e.occurred_at.timestamp() >= started - 1
    ]
    assert actions == ["canary_started", "canary_stopped"], actions


def test_a_canary_better_live_is_promoted_by_the_sequential_test(
    full_stack: Settings, adapters: tuple[VersionInfo, VersionInfo]
) -> None:
    bad, good = adapters
    promote(full_stack, bad.version)  # a champion that answers badly...
    wait_served(full_stack, bad.served_name)
    with _traffic(full_stack) as done:
        time.sleep(3)
        status, why = _run_canary(full_stack, good)  # ...and a canary that answers well
        time.sleep(4)
    sim = done[0]
    print(f"good canary: {why[-1]}; {len(sim.requests)} requests")
    assert status == "promoted", why
    assert "canary promote" in why[-1], why
    registry = ModelRegistry(full_stack)
    champion = registry.champion()
    assert champion is not None and champion.version == good.version
    assert registry.canary() is None
    assert [r.error for r in sim.requests if r.status != "ok"] == []
    assert sim.requests[-1].version == good.served_name


def test_a_shadow_canary_is_never_seen_and_is_judged_by_the_champions_ratings(
    full_stack: Settings, adapters: tuple[VersionInfo, VersionInfo]
) -> None:
    bad, _ = adapters
    shadow = SPEC.model_copy(update={"mode": "shadow"})
    with _traffic(full_stack) as done:
        time.sleep(3)
        status, why = _run_canary(full_stack, bad, shadow)
    sim = done[0]
    print(f"shadow canary: {why[-1]}; {len(sim.requests)} requests")
    assert status == "rejected", why
    assert "canary rollback" in why[-1], why
    # Users only ever got the champion's answers...
    assert {r.version for r in sim.requests if r.status == "ok"} == {full_stack.served_model_name}
    assert [r.error for r in sim.requests if r.status != "ok"] == []
    # ...while the canary answered their requests on the side, each tied to the shown one.
    shown = {r.prediction_id for r in sim.requests if r.prediction_id}
    logged = read_events(
        full_stack, Stream.PREDICTIONS, {f"{p}.shadow" for p in shown}, "prediction_id"
    )
    shadows = [e for e in logged if isinstance(e, PredictionEvent)]
    assert shadows and {e.model_version for e in shadows} == {bad.version}
    assert {e.shadow_of for e in shadows} <= shown


def test_an_operator_stops_a_canary_and_its_run_records_why(
    full_stack: Settings, adapters: tuple[VersionInfo, VersionInfo]
) -> None:
    """`refinery canary-stop` takes the canary off traffic while its watch waits for
    thumbs; the watch ends at once and the run records it rejected by an operator."""
    _, good = adapters
    patient = SPEC.model_copy(update={"min_per_arm": 100_000})  # thumbs never decide here
    ended: list[tuple[str, list[str]]] = []
    watcher = threading.Thread(target=lambda: ended.append(_run_canary(full_stack, good, patient)))
    watcher.start()
    registry = ModelRegistry(full_stack)
    deadline = time.monotonic() + 60
    while registry.canary() is None:
        assert time.monotonic() < deadline and watcher.is_alive(), "the canary never started"
        time.sleep(0.5)
    admin = {"REFINERY_CLIENT_API_KEY": API_KEYS["admin"]}
    done = run_cli(full_stack, "canary-stop", "--reason", "ops test", env=admin)
    assert done.returncode == 0, done.stderr
    assert f"canary v{good.version} stopped" in done.stdout
    watcher.join(timeout=60)
    [(status, why)] = ended
    assert status == "rejected" and why[-1] == "ended by an operator", why
    assert registry.canary() is None
    stopped = [
        e
        for e in read_events(full_stack, Stream.MODELS, {"canary_stopped"}, "action")
        if isinstance(e, ModelEvent) and e.version == good.version
    ]
    assert any("stopped by hand: ops test" in e.reasons for e in stopped), stopped
    refused = run_cli(full_stack, "canary-stop", env=admin)  # nothing runs now
    assert refused.returncode != 0 and "no canary is running" in refused.stderr
