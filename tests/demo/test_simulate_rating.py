"""How simulated users rate answers: labels right or wrong as before; free text by chrF to
the hidden reference, with corrections that are the reference's phrasings."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import random
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest
import sacrebleu

from refinery.common.settings import Settings
from refinery.common.task import TaskKind, TaskObjective
from refinery.demo.corpus import generate
from refinery.demo.loop import Round, Timeline, phase_accuracy, print_report, report
from refinery.demo.replies import phrasings, references
from refinery.demo.simulate import (
    ACCURACY,
    CHRF,
    Request,
    Simulation,
    SimulationConfig,
    _ask,
    accuracy,
    correction,
    judge,
    task_metric,
    until_promoted_then,
)
from refinery.retrainer.record import RunRecord, Timings

TRIAGE = TaskObjective(
    name="support-triage",
    kind="classification",
    prompt_template="Ticket: {text}\nTeam:",
    labels=["billing", "shipping", "account", "technical", "returns"],
    max_new_tokens=4,
)
REPLY = TaskObjective(
    name="support-reply",
    kind="generation",
    prompt_template="Ticket: {text}\nReply:",
    max_new_tokens=32,
)
CHAT = TaskObjective(name="support-reply-chat", kind="chat", max_new_tokens=32)
THRESHOLD = SimulationConfig().thumbs_up_chrf
RETURN = "You can return it within 30 days and we will refund you."


def test_the_default_threshold_is_60() -> None:
    assert THRESHOLD == 60.0


@pytest.mark.parametrize(
    ("task", "truth"), [(REPLY, f" {RETURN}"), (CHAT, RETURN)], ids=["generation", "chat"]
)
def test_the_reference_and_its_paraphrases_get_thumbs_up(task: TaskObjective, truth: str) -> None:
    for phrasing in (f" {RETURN}\n", "You can send it back within 30 days and we will refund you."):
        exact = judge(task, truth, phrasing, THRESHOLD)  # the reference, or another phrasing
        assert exact.up and exact.score == pytest.approx(100.0)
    for paraphrase in (
        "you can return it within 30 days and we'll refund you",
        "You can return it within 30 days and we refund you.",
        "Return it within 30 days, we will refund you!",
        "You may send it back within 30 days and we will refund you",
    ):
        verdict = judge(task, truth, paraphrase, THRESHOLD)
        assert verdict.up, (paraphrase, verdict)
        assert verdict.score is not None and THRESHOLD <= verdict.score < 100


@pytest.mark.parametrize(
    ("task", "truth"), [(REPLY, f" {RETURN}"), (CHAT, RETURN)], ids=["generation", "chat"]
)
def test_off_topic_answers_get_thumbs_down(task: TaskObjective, truth: str) -> None:
    for answer in (
        "Restart the hub and reconnect it to your Wi-Fi.",  # another issue, another product
        "You can return the device within 60 days in its original box.",  # smart-home return
        "I have sent you a new link to reset your password.",
        " returns",  # a label is no reply
        "",
    ):
        verdict = judge(task, truth, answer, THRESHOLD)
        assert not verdict.up, (answer, verdict)
        assert verdict.score is not None and verdict.score < THRESHOLD


def test_the_threshold_is_the_users_bar() -> None:
    answer = "You can return it within a month and we will refund you."
    score = judge(REPLY, f" {RETURN}", answer, THRESHOLD).score
    assert score is not None and 0 < score < 100
    assert judge(REPLY, f" {RETURN}", answer, score).up
    assert not judge(REPLY, f" {RETURN}", answer, score + 0.1).up


def test_no_reference_passes_for_another() -> None:
    """What makes thumbs-down mean "wrong": every reference, in any phrasing, stays below the
    threshold against every other reference's phrasings."""
    for a, b in itertools.permutations(references(), 2):
        for phrasing in phrasings(a):
            assert not judge(REPLY, f" {b}", phrasing, THRESHOLD).up, (phrasing, b)


@pytest.mark.parametrize("task", [REPLY, CHAT], ids=lambda t: t.kind)
def test_corrections_are_phrasings_of_the_reference(task: TaskObjective) -> None:
    rng = random.Random(0)
    for ex in generate(task, 50, seed=3, domain="smart_home"):
        written = {correction(task, ex.completion, rng) for _ in range(30)}
        assert len(written) > 1  # people word the same reply a little differently
        for text in written:
            assert text.strip() in phrasings(ex.completion)
            # in the task's completion format: generation continues "Reply:" after a space
            assert text.startswith(" ") == (task.kind == "generation")
            assert judge(task, ex.completion, text, THRESHOLD).up


def test_classification_rating_is_unchanged() -> None:
    """Right when the answer names the true label; the correction is the true label, and
    drawing it takes nothing from the random stream (the simulation's draws stay as before)."""
    assert judge(TRIAGE, " shipping", " shipping", THRESHOLD).up
    assert judge(TRIAGE, " shipping", "Shipping.", THRESHOLD).up
    assert not judge(TRIAGE, " shipping", " returns", THRESHOLD).up
    assert not judge(TRIAGE, " shipping", " I think shipping", THRESHOLD).up
    assert judge(TRIAGE, " shipping", " returns", THRESHOLD).score is None
    rng, untouched = random.Random(1), random.Random(1)
    assert correction(TRIAGE, " shipping", rng) == " shipping"
    assert rng.random() == untouched.random()


def _requests(scores: list[float | None], correct: list[bool]) -> list[Request]:
    out = []
    for i, (score, right) in enumerate(zip(scores, correct, strict=True)):
        r = Request(t=float(i), domain="retail", truth=" x", status="ok")
        r.score, r.correct = score, right
        out.append(r)
    return out


def test_the_task_metric_is_accuracy_for_labels_and_chrf_for_free_text() -> None:
    assert task_metric("classification") is ACCURACY
    assert task_metric("generation") is CHRF and task_metric("chat") is CHRF
    labels = _requests([None, None, None, None], [True, False, True, True])
    labels.append(Request(t=9, domain="retail", truth=" x", status="error"))
    assert ACCURACY.of(labels) == accuracy(labels) == 0.75
    free = _requests([100.0, 40.0, 70.0], [True, False, True])
    assert CHRF.of(free) == pytest.approx(70.0)
    assert CHRF.of([]) is None and ACCURACY.of([]) is None


def _simulation(kind: TaskKind) -> Simulation:
    sim = Simulation(started_at=0.0, config=SimulationConfig(shift_at_s=10), kind=kind)
    for i in range(40):
        r = Request(t=float(i), domain="smart_home" if i % 2 else "retail", truth=" x")
        r.status, r.version = "ok", "refinery-model-v1" if i < 30 else "refinery-model-v2"
        r.correct = i < 10 or i >= 30 or i % 2 == 0
        r.score = None if kind == "classification" else (90.0 if r.correct else 30.0)
        r.rating = "up" if r.correct else "down"
        sim.requests.append(r)
    return sim


def _timeline(golden: tuple[float, float] = (0.85, 0.885)) -> Timeline:
    run = RunRecord(
        run_id="r",
        url="http://mlflow/r",
        started_at=15.0,
        trigger_id="t",
        reason="drift",
        outcome="promoted",
        version="2",
        timings=Timings(data_seconds=1.0, training_seconds=5.0, evaluation_seconds=2.0),
        golden_champion=golden[0],
        golden_challenger=golden[1],
    )
    first = Round(
        trigger=4.0,
        trigger_id="t",
        kind="drift",
        run=run,
        run_start=5.0,
        decided=18.0,
        first_served=20.0,
        new_domain_ratings=7,
    )
    return Timeline(onset_at=10.0, alert=2.0, rounds=[first])


def test_free_text_reports_show_chrf(tmp_path: Path) -> None:
    sim = _simulation("generation")
    by_phase = phase_accuracy(sim, _timeline())
    assert by_phase["after drift"] == {"retail": 90.0, "smart_home": 30.0}
    assert by_phase["after v2"] == {"retail": 90.0, "smart_home": 90.0}
    summary = report(sim, _timeline())
    assert summary["rounds"][0]["recovered"] == pytest.approx(90.0 / 90.0)
    assert summary["chrF"] == by_phase and "accuracy" not in summary
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_report(summary, [], Settings(var_dir=tmp_path), sim.metric)
    assert "chrF (0-100) from the simulator's ground truth" in out.getvalue()
    assert " 90.0 /  30.0" in out.getvalue()
    assert "85.0 ->  88.5" in out.getvalue()
    sim.save(tmp_path / "requests.jsonl")
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    meta, first = json.loads(lines[0]), json.loads(lines[1])
    assert meta["kind"] == "generation" and first["score"] == 90.0


def test_label_reports_keep_their_shape(tmp_path: Path) -> None:
    sim = _simulation("classification")
    summary = report(sim, _timeline())
    assert summary["accuracy"]["after drift"] == {"retail": 1.0, "smart_home": 0.0}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_report(summary, [], Settings(var_dir=tmp_path))
    assert "Accuracy from the simulator's ground truth (retail / smart_home)" in out.getvalue()
    assert (
        "round 1 (drift): v2 promoted, 7 smart_home ratings before its snapshot" in out.getvalue()
    )
    assert "0.850 -> 0.885" in out.getvalue()
    sim.save(tmp_path / "requests.jsonl")
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    meta, first = json.loads(lines[0]), json.loads(lines[1])
    assert "kind" not in meta and "score" not in first


@pytest.mark.parametrize("task", [REPLY, CHAT], ids=lambda t: t.kind)
def test_apps_call_the_endpoint_of_the_task(task: TaskObjective) -> None:
    """Generation goes to /v1/completions with the rendered prompt; chat to
    /v1/chat/completions with the system prompt and the ticket (an HTTP double, no server)."""
    seen: list[tuple[str, dict[str, object]]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        base = {"id": "cmpl-1", "created": 0, "model": "refinery-model-v2"}
        if request.url.path.endswith("/chat/completions"):
            message = {"role": "assistant", "content": RETURN}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return httpx.Response(
                200, json={**base, "object": "chat.completion", "choices": [choice]}
            )
        choice = {"index": 0, "text": f" {RETURN}", "finish_reason": "stop"}
        return httpx.Response(200, json={**base, "object": "text_completion", "choices": [choice]})

    ex = generate(task, 1, seed=0, domain="smart_home")[0]

    async def ask() -> tuple[str, str, str]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="k", http_client=http)
        async with client:
            return await _ask(client, "refinery-model", task, ex, "user-1")

    pid, served, text = asyncio.run(ask())
    assert (pid, served) == ("cmpl-1", "refinery-model-v2")
    path, body = seen[0]
    assert body["segment"] == "smart_home" and body["max_tokens"] == 32
    assert body["temperature"] == 0 and body["user"] == "user-1"
    if task.kind == "chat":
        assert path == "/v1/chat/completions" and text == RETURN
        assert ex.messages is not None
        assert body["messages"] == [t.model_dump() for t in ex.messages]
    else:
        assert path == "/v1/completions" and text == f" {RETURN}"
        assert body["prompt"] == ex.prompt
    assert sacrebleu.sentence_chrf(text.strip(), [RETURN]).score == pytest.approx(100.0)


def test_the_simulation_plays_on_while_a_retraining_is_under_way() -> None:
    """Done only after a second version answered, ``seconds`` after the newest version's
    first answer, and while no trigger waits for its decision (a refinement round)."""
    import time

    sim = _simulation("classification")  # v1 answers until t=30 s, v2 after
    sim.started_at = time.time() - 45.0  # 45 s in: v2 first answered 15 s ago
    busy = [True]
    done = until_promoted_then(10.0, busy=lambda answered: busy[0] or "v3" not in answered)
    assert not done(sim)  # a refinement round is training
    busy[0] = False
    assert not done(sim)  # v3 was promoted and has not answered yet
    sim.requests.append(Request(t=30.0, domain="retail", truth=" x", status="ok", version="v3"))
    assert done(sim)
    assert not until_promoted_then(20.0)(sim)  # not 20 s after v2's first answer yet
    sim.requests.append(Request(t=44.0, domain="retail", truth=" x", status="ok", version="v4"))
    assert not until_promoted_then(10.0)(sim)  # v4 answered 1 s ago: it gets its time too


def test_a_loop_that_never_promoted_reports_before_and_after_the_drift_only() -> None:
    sim = _simulation("classification")
    timeline = _timeline()
    first = timeline.rounds[0]
    assert first.run is not None
    rejected = replace(first, run=replace(first.run, outcome="rejected"))
    by_phase = phase_accuracy(sim, replace(timeline, rounds=[rejected]))
    assert list(by_phase) == ["before drift", "after drift"]
    assert by_phase["after drift"]["smart_home"] == pytest.approx(1 / 3)  # every answer since
