"""Annotation, the time split, leakage removal, and which waiting trigger runs."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from refinery.common.datasets import LabeledText
from refinery.common.events import ChatTurn, ExampleEvent, TriggerEvent
from refinery.common.task import GateSpec, TaskFile, TaskObjective
from refinery.retrainer.examples import TrainingExample, annotate
from refinery.retrainer.service import pick
from refinery.retrainer.splits import feedback_repeats, split, write_jsonl

TASK = TaskFile(
    task=TaskObjective(
        name="t",
        kind="classification",
        prompt_template="Ticket: {text}\nTeam:",
        labels=["billing", "shipping", "account", "technical", "returns"],
    ),
    gate=GateSpec(test_share=0.25),
)
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _word(i: int) -> str:
    return chr(97 + i % 26) + chr(97 + i // 26) + "zz"


def example(
    i: int, rating: str = "up", correction: str | None = None, **kw: object
) -> ExampleEvent:
    return ExampleEvent(
        feedback_id=f"f{i}",
        prediction_id=str(uuid.uuid4()),
        prompt=kw.get("prompt", f"Ticket: smart plug {_word(i)} clicks loud\nTeam:"),  # type: ignore[arg-type]
        completion=" technical",
        model_version="1",
        rating=rating,  # type: ignore[arg-type]
        correction=correction,
        label_source=kw.get("label_source", "user"),  # type: ignore[arg-type]
        predicted_at=T0 + timedelta(minutes=i),
        rated_at=T0 + timedelta(minutes=i, seconds=30),
    )


def test_feedback_becomes_targets_corrections_and_negatives() -> None:
    assert annotate(example(1)).target == " technical" and annotate(example(1)).positive
    fixed = annotate(example(2, "down", " returns"))
    assert (fixed.target, fixed.positive, fixed.source) == (" returns", True, "correction")
    review = annotate(example(3, "down", " billing", label_source="reviewer"))
    assert review.source == "reviewer"
    negative = annotate(example(4, "down"))
    assert (negative.target, negative.positive, negative.source) == (
        " technical",
        False,
        "thumbs_down",
    )


def test_the_newest_rated_share_is_the_test_split_and_never_trained_on() -> None:
    feedback = [example(i) for i in range(40)]
    # an old seed example that repeats a test prompt (different case and digits) must go
    seed = [
        LabeledText(
            prompt=f"ticket: SMART PLUG {_word(35).upper()} clicks, loud\nTeam:",
            completion=" technical",
        )
    ]
    golden = [LabeledText(prompt=feedback[0].prompt, completion=" technical")]
    splits = split(TASK, feedback, seed, golden)
    assert [e.example_id for e in splits.recent_test] == [e.event_id for e in feedback[30:]]
    trained = {e.example_id for e in splits.train + splits.validation}
    assert not trained & {e.event_id for e in feedback[30:]}
    assert feedback[0].event_id not in trained  # its prompt is in the golden set
    assert all(e.source != "seed" for e in splits.train + splits.validation)
    assert splits.held_out_overlap == 2


def trigger(tid: str, by: str = "monitor", version: str | None = "1") -> TriggerEvent:
    evidence = {"reference_version": version} if version else {}
    return TriggerEvent(trigger_id=tid, reason="r", requested_by=by, evidence=evidence)  # type: ignore[arg-type]


def test_feedback_since_the_drift_began_is_weighted_older_feedback_and_seed_count_once() -> None:
    task = TASK.model_copy(
        update={"training": TASK.training.model_copy(update={"feedback_weight": 3})}
    )
    feedback = [example(i) for i in range(40)]  # rated at minute i (+30 s)
    seed = [
        LabeledText(prompt=f"Ticket: invoice {_word(i)} twice\nTeam:", completion=" billing")
        for i in range(20)
    ]
    since = T0 + timedelta(minutes=20)
    splits = split(task, feedback, seed, [], since=since)
    seen: dict[str, int] = {}
    for e in splits.train + splits.validation:
        seen[e.example_id or e.prompt] = seen.get(e.example_id or e.prompt, 0) + 1
    old = {e.event_id for e in feedback[:20]}
    new = {e.event_id for e in feedback[20:30]}  # 30-39: the recent test split
    assert {seen[i] for i in old} == {1}
    assert {seen[i] for i in new} == {3}
    assert {seen[s.prompt] for s in seed} == {1}
    everything = split(task, feedback, seed, [])  # no drift start (a manual trigger): all
    assert len(everything.train + everything.validation) == 20 + 30 * 3


def test_waiting_triggers_coalesce_into_the_newest_and_stale_ones_are_skipped() -> None:
    assert (
        pick([trigger("a"), trigger("b")], "1") == trigger("b")
        or pick([trigger("a"), trigger("b")], "1").trigger_id == "b"
    )  # type: ignore[union-attr]
    chosen = pick([trigger("old", version="1"), trigger("manual", by="cli", version=None)], "2")
    assert chosen is not None and chosen.trigger_id == "manual"
    assert pick([trigger("old", version="1")], "2") is None


def test_a_chat_example_is_logged_with_its_turns_as_messages(tmp_path: Path) -> None:
    turns = (ChatTurn(role="system", content="Be brief."), ChatTurn(role="user", content="hi"))
    example = TrainingExample(prompt="hi", target="Hello.", positive=True, source="seed")
    write_jsonl(
        tmp_path / "train.jsonl",
        [example, TrainingExample(**{**example.__dict__, "messages": turns})],
    )
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert rows[0]["messages"] is None
    assert rows[1]["messages"] == [t.model_dump() for t in turns]


def test_repeats_shrink_as_ratings_pile_up_so_a_later_round_costs_what_the_first_did() -> None:
    spec = TASK.training.model_copy(update={"feedback_weight": 8, "max_feedback_ratio": 1.5})
    assert feedback_repeats(spec, recent=300, pool=2350) == 8  # 1.5 x 2050 / 300 = 10.25
    assert feedback_repeats(spec, recent=1200, pool=3250) == 3  # 1.5 x 2050 / 1200 = 2.6
    assert feedback_repeats(spec, recent=5000, pool=5100) == 1  # never fewer than once
    assert feedback_repeats(spec, recent=0, pool=2000) == 8
    unbounded = spec.model_copy(update={"max_feedback_ratio": None})
    assert feedback_repeats(unbounded, recent=1200, pool=3250) == 8
