"""The closed loop end to end, every real process, on a stack of its own: traffic shifts to
the new product line, the monitor alerts and triggers, the retrainer trains, evaluates and
promotes, the gateway serves the new version, and accuracy on the new domain recovers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.common.events import PredictionEvent
from services.common.registry import ModelRegistry
from services.common.settings import REPO_ROOT, Settings
from services.common.task import load_task
from services.common.topics import Stream
from services.demo.loop import build_timeline, phase_accuracy, plot
from services.demo.simulate import SimulationConfig, simulate, until_promoted_then
from services.stack.stack import Stack
from tests.conftest import API_KEYS
from tests.inference.helpers import read_events
from tests.ports import LOOP, ports

LOOP_TASK = REPO_ROOT / "tests" / "data" / "task-loop.yaml"


@pytest.fixture(scope="module")
def loop_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(
        var_dir=tmp_path_factory.mktemp("loop-var"),
        task_file=LOOP_TASK,
        **ports(LOOP),
        vllm_max_model_len=256,
        api_keys=SecretStr(",".join(f"{key}:{scope}" for scope, key in API_KEYS.items())),
    )
    stack = Stack(settings)
    try:
        stack.up()
        yield settings
    finally:
        stack.down()


def test_drift_feedback_retraining_and_recovery(loop_stack: Settings, tmp_path: Path) -> None:
    settings = loop_stack
    registry = ModelRegistry(settings)
    champion_before = registry.champion()
    assert champion_before is not None
    config = SimulationConfig(rate=10, shift_at_s=25, max_duration_s=360, after_promotion_s=20)
    sim = asyncio.run(
        simulate(
            settings.gateway_url,
            API_KEYS["admin"],
            settings.registered_model,
            load_task(LOOP_TASK).task,
            config,
            done=until_promoted_then(config.after_promotion_s),
        )
    )
    timeline = build_timeline(settings, sim)
    accuracy = phase_accuracy(sim, timeline)
    print(f"timeline {timeline}\naccuracy {accuracy}")
    assert all(t is not None for _, t in timeline.rows()), timeline

    champion_after = registry.champion()
    assert champion_after is not None and champion_after.version != champion_before.version
    assert timeline.promoted_version == champion_after.version
    drifted = accuracy["after drift"]["smart_home"]
    recovered = accuracy["after promotion"]["smart_home"]
    assert drifted is not None and recovered is not None
    assert recovered >= drifted + 0.3

    answered = {r.prediction_id for r in sim.requests if r.status == "ok"}
    assert len(answered) == len(sim.requests), [r.error for r in sim.requests if r.error][:3]
    logged = read_events(settings, Stream.PREDICTIONS, answered, "prediction_id", timeout_s=60)
    assert {e.prediction_id for e in logged if isinstance(e, PredictionEvent)} == answered

    files = plot(sim, timeline, tmp_path)
    assert all(f.stat().st_size > 10_000 for f in files)
