"""The closed loop end to end, every real process, on a stack of its own: traffic shifts to
the new product line, the monitor alerts and triggers, the retrainer trains, evaluates and
promotes, the gateway serves the new version, and quality on the new domain recovers.

Once per task kind: a label (accuracy), a free-text reply after a prompt (generation) and
the same reply as a chat answer, each judged on chrF by the simulated users and the gate.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from refinery.common.events import PredictionEvent
from refinery.common.registry import ModelRegistry
from refinery.common.settings import REPO_ROOT, Settings
from refinery.common.task import TaskFile, load_task
from refinery.common.topics import Stream
from refinery.demo.loop import build_timeline, phase_accuracy, plot
from refinery.demo.simulate import SimulationConfig, simulate, until_promoted_then
from refinery.stack.balancer import balancer_url
from refinery.stack.stack import Stack
from tests.browser import render
from tests.conftest import API_KEYS
from tests.inference.helpers import read_events
from tests.ports import LOOP, ports

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class LoopCase:
    task_file: Path
    min_gain: float  # the new domain's quality after promotion minus before, at least
    # Requests/s: a 30-token reply costs vLLM 8x the decoding of a 4-token label, and on a
    # 2-core host the monitor (which embeds every free-text window) must keep up beside it.
    rate: float
    # Seconds of traffic at most: on 2 cores the first two free-text windows sometimes take
    # ~2 minutes each to test beside vLLM (later ones ~10 s), so free text gets longer.
    max_duration_s: float = 420
    # Settings on top of the loop's own: the stack's shape.
    shape: dict[str, Any] = field(default_factory=dict)
    # Traffic after the first promotion: time for it to be served (both gateways switch).
    after_promotion_s: float = 20
    # Of the thumbs-down, the share sent with the right answer. The trigger waits for
    # min_new_labels corrections or thumbs-up, which at 6 requests/s of free text is most
    # of the detection time: 0.5 took ~105 s from the shift to the trigger, 0.8 (agents
    # who correct most replies they reject) gets the same labels ~1.4x sooner.
    correction_share: float = 0.5


# Scale-out, on one host: three Kafka nodes, six partitions, MLflow on PostgreSQL, two vLLM
# replicas, two gateways behind nginx (the traffic goes through it), two monitor workers.
SCALED = {
    "kafka_nodes": 3,
    "topic_partitions": 6,
    "mlflow_backend": "postgresql",
    "vllm_replicas": 2,
    "gateway_replicas": 2,
    "monitor_workers": 2,
}


DATA = REPO_ROOT / "tests" / "data"
CASES = {
    # The label task runs on the scaled-out stack; the free-text ones on one of each.
    "classification": LoopCase(
        DATA / "task-loop.yaml", min_gain=0.3, rate=10, shape=SCALED, after_promotion_s=40
    ),
    # chrF is on 0-100: a wrong product line's reply scores ~15-30, a right one ~90+.
    "generation": LoopCase(
        DATA / "task-loop-reply.yaml", min_gain=25, rate=6, max_duration_s=660, correction_share=0.8
    ),
    "chat": LoopCase(
        DATA / "task-loop-chat.yaml", min_gain=25, rate=6, max_duration_s=660, correction_share=0.8
    ),
}


def _worker_work(port: int) -> dict[str, float]:
    """Events a monitor worker read (by stream), rows it gathered for the windows and
    windows it closed, from its metrics."""
    work: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line.startswith(
            (
                "refinery_monitor_events_total{",
                "refinery_monitor_windows_total{",
                "refinery_monitor_window_rows_total ",
            )
        ):
            name, value = line.rsplit(" ", 1)
            work[name.removeprefix("refinery_monitor_")] = float(value)
    return work


@pytest.fixture(scope="module", params=list(CASES))
def loop_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, LoopCase]]:
    case = CASES[request.param]
    # Under root, PostgreSQL runs as its own user: its folder must be reachable by it
    # (pytest's temp folders are private to root).
    var = Path(tempfile.mkdtemp(prefix=f"refinery-loop-{request.param}-"))
    var.chmod(0o755)
    settings = Settings(
        var_dir=var,
        task_file=case.task_file,
        **ports(LOOP),
        vllm_max_model_len=256,
        api_keys=SecretStr(",".join(f"{key}:{scope}" for scope, key in API_KEYS.items())),
        **case.shape,
    )
    stack = Stack(settings)
    try:
        stack.up()
        yield settings, case
    finally:
        stack.down()  # var stays: the logs say what happened (in /tmp, like pytest's own)


def test_drift_feedback_retraining_and_recovery(
    loop_stack: tuple[Settings, LoopCase], tmp_path: Path
) -> None:
    settings, case = loop_stack
    task_file: TaskFile = load_task(case.task_file)
    registry = ModelRegistry(settings)
    champion_before = registry.champion()
    assert champion_before is not None
    config = SimulationConfig(
        rate=case.rate,
        shift_at_s=25,
        max_duration_s=case.max_duration_s,
        after_promotion_s=case.after_promotion_s,
        correction_share=case.correction_share,
    )
    entry = balancer_url(settings) if settings.gateway_replicas > 1 else settings.gateway_url
    sim = asyncio.run(
        simulate(
            entry,
            API_KEYS["admin"],
            settings.registered_model,
            task_file.task,
            config,
            done=until_promoted_then(config.after_promotion_s),
        )
    )
    timeline = build_timeline(settings, sim)
    quality = phase_accuracy(sim, timeline)  # accuracy, or chrF (0-100) for free text
    rated = sum(r.rating is not None for r in sim.requests)
    print(f"timeline {timeline}\n{sim.metric.name} {quality}\nsplit {timeline.split()}")
    print(f"ratings sent {rated}, requests {len(sim.requests)}")
    first = timeline.first_promoted  # a refinement round may follow: it is not waited for
    assert first is not None and first.run is not None, timeline
    assert None not in (timeline.alert, first.run_start, first.decided, first.first_served)

    champion_after = registry.champion()
    assert champion_after is not None and champion_after.version != champion_before.version
    # Read again: a refinement round may have promoted another version since the first read.
    promoted = [r.version for r in build_timeline(settings, sim).rounds if r.outcome == "promoted"]
    assert champion_after.version in promoted
    drifted = quality["after drift"]["smart_home"]
    recovered = quality[f"after v{first.version}"]["smart_home"]
    assert drifted is not None and recovered is not None
    assert recovered >= drifted + case.min_gain
    # The golden set (the old domain) within the gate's tolerance, in the gate metric (0-1).
    before, after = first.run.golden_champion, first.run.golden_challenger
    assert before is not None and after is not None
    assert after >= before - task_file.gate.golden_tolerance - 1e-9

    answered = {r.prediction_id for r in sim.requests if r.status == "ok"}
    assert len(answered) == len(sim.requests), [r.error for r in sim.requests if r.error][:3]
    logged = read_events(settings, Stream.PREDICTIONS, answered, "prediction_id", timeout_s=60)
    assert {e.prediction_id for e in logged if isinstance(e, PredictionEvent)} == answered

    # Every vLLM replica serves the promoted version; what each monitor worker did.
    for url in settings.vllm_urls:
        deadline = time.monotonic() + 60  # a version promoted just now reaches it in seconds
        while True:
            champion = registry.champion()  # a refinement round may have promoted since
            assert champion is not None
            served = champion.served_name if champion.kind == "lora" else None
            names = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
            if served is None or served in names or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert served is None or served in names, (url, names)
    for i in range(settings.monitor_workers):
        print(f"monitor worker {i + 1}: {_worker_work(settings.monitor_metrics_port + i)}")

    files = plot(sim, timeline, tmp_path)
    assert all(f.stat().st_size > 10_000 for f in files)

    # What ops saw of it: the Evidently dashboard of this loop, drawn in a browser.
    ui = settings.evidently_ui_url
    [project] = httpx.get(f"{ui}/api/projects").json()
    windows = httpx.get(f"{ui}/api/projects/{project['id']}/snapshots").json()
    assert any("drifted" in w["tags"] for w in windows)
    assert {w["metadata"]["model_version"] for w in windows} >= {champion_before.version}
    shot = REPO_ROOT / "var" / "screenshots" / f"loop-{task_file.task.kind}-dashboard.png"
    drawn = render(
        f"{ui}/projects/{project['id']}",
        "document.body.innerText.includes('Quality from feedback')"
        " && document.querySelectorAll('svg circle').length",
        shot,
    )
    assert drawn and drawn >= len(windows), f"no chart points drawn (see {shot})"
