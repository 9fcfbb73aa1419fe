"""Evaluation: metrics, the paired comparison, the gate and the report, on hand-made items."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sklearn.metrics import f1_score

from services.common.task import GateSpec, TaskObjective
from services.retrainer.evaluation import (
    PairedComparison,
    Scored,
    compare,
    confusion,
    error_analysis,
    flips,
    gate,
    main_metric,
    metrics,
    per_segment,
    score_outputs,
    write_report,
)

LABELS = ["billing", "shipping", "account", "technical", "returns"]
TASK = TaskObjective(
    name="t", kind="classification", prompt_template="Ticket: {text}\nTeam:", labels=LABELS
)
GENERATION = TaskObjective(name="g", kind="generation", prompt_template="Say: {text}\n")


def small() -> list[Scored]:
    """Six items: four right, one wrong label, one unparseable output."""
    targets = [" billing", " billing", " shipping", " account", " returns", " technical"]
    outputs = [" billing", " shipping", " shipping.", " Account please", " returns", " dunno"]
    prompts = [f"Ticket: item {i}\nTeam:" for i in range(6)]
    segments = ["web", "web", "app", None, "app", "web"]
    return score_outputs(TASK, prompts, targets, outputs, segments)


def paired(
    champion_right: list[bool], challenger_right: list[bool]
) -> tuple[list[Scored], list[Scored]]:
    """Classification items whose correctness per model is given."""
    champion: list[Scored] = []
    challenger: list[Scored] = []
    for i, (a, b) in enumerate(zip(champion_right, challenger_right, strict=True)):
        prompt = f"Ticket: item {i}\nTeam:"
        champion.append(Scored(prompt, " billing", " billing" if a else " shipping", "web", a))
        challenger.append(Scored(prompt, " billing", " billing" if b else " returns", "web", b))
    return champion, challenger


BASE = PairedComparison(
    metric="accuracy",
    champion=0.6,
    challenger=0.8,
    difference=0.2,
    ci_low=0.1,
    ci_high=0.3,
    mcnemar_p=0.001,
    champion_only=2,
    challenger_only=22,
    n=100,
)


def comparison(**overrides: Any) -> PairedComparison:
    return replace(BASE, **overrides)


def test_score_outputs_reads_labels_and_checks_lengths() -> None:
    scored = small()
    assert [s.correct for s in scored] == [True, False, True, True, True, False]
    with pytest.raises(ValueError, match="length"):
        score_outputs(TASK, ["a"], [" billing"], [], [None])


def test_classification_metrics_match_sklearn() -> None:
    scored = small()
    result = metrics(TASK, scored)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["n"] == 6
    expected = f1_score(
        ["billing", "billing", "shipping", "account", "returns", "technical"],
        ["billing", "shipping", "shipping", "account", "returns", "other"],
        labels=LABELS,
        average="macro",
        zero_division=0,
    )
    assert result["macro_f1"] == pytest.approx(expected)
    assert main_metric(TASK) == "accuracy"


def test_generation_metrics() -> None:
    targets = [" the parcel left the warehouse today", " your refund is on its way", " hello"]
    outputs = [" the parcel left the warehouse today ", " your refund is coming soon", " bye"]
    scored = score_outputs(GENERATION, ["a", "b", "c"], targets, outputs, [None] * 3)
    result = metrics(GENERATION, scored)
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["n"] == 3
    assert 0 < result["bleu"] <= 100
    assert 0 < result["chrf"] <= 100
    assert main_metric(GENERATION) == "exact_match"


def test_compare_finds_a_real_improvement() -> None:
    champion_right = [i < 40 for i in range(100)]
    challenger_right = [i < 80 for i in range(100)]
    result = compare(*paired(champion_right, challenger_right), confidence=0.95, samples=2000)
    assert result.difference == pytest.approx(0.4)
    assert result.champion == pytest.approx(0.4)
    assert result.challenger == pytest.approx(0.8)
    assert result.ci_low > 0
    assert result.ci_low <= 0.4 <= result.ci_high
    assert result.mcnemar_p < 0.001
    assert (result.champion_only, result.challenger_only, result.n) == (0, 40, 100)
    again = compare(*paired(champion_right, challenger_right), confidence=0.95, samples=2000)
    assert again == result  # seeded


def test_compare_identical_models() -> None:
    right = [i % 3 == 0 for i in range(60)]
    result = compare(*paired(right, right), confidence=0.95, samples=500)
    assert result.difference == 0
    assert result.mcnemar_p == 1.0
    assert result.ci_low <= 0 <= result.ci_high


def test_compare_refuses_unpaired_items() -> None:
    champion, challenger = paired([True, False], [True, True])
    with pytest.raises(ValueError):
        compare(champion, challenger[:1], confidence=0.95, samples=100)
    with pytest.raises(ValueError):
        compare([], [], confidence=0.95, samples=100)
    with pytest.raises(ValueError, match="paired"):
        compare(champion, challenger[::-1], confidence=0.95, samples=100)
    with pytest.raises(ValueError, match="paired"):
        flips(champion, challenger[::-1])


def test_gate_promotes_when_everything_holds() -> None:
    decision = gate(comparison(), comparison(difference=-0.01, ci_low=-0.03), GateSpec())
    assert decision.promote
    assert len(decision.reasons) == 4
    assert "recent traffic: accuracy +0.200 (95% CI +0.100..+0.300) >= +0.020 required" in (
        decision.reasons
    )


@pytest.mark.parametrize(
    ("recent", "golden", "reason"),
    [
        ({"n": 12}, {}, "only 12 test examples, 30 required"),
        ({"difference": 0.01, "ci_low": 0.005}, {}, "accuracy +0.010"),
        ({"ci_low": 0.0}, {}, "CI lower bound +0.000 <= 0"),
        ({}, {"difference": -0.05}, "golden set: accuracy -0.050"),
    ],
)
def test_gate_rejects_each_failure_with_its_reason(recent: dict, golden: dict, reason: str) -> None:
    decision = gate(comparison(**recent), comparison(**golden), GateSpec())
    assert not decision.promote
    assert len(decision.reasons) == 1
    assert reason in decision.reasons[0]


def test_gate_lists_every_failure_and_fails_closed_on_nan() -> None:
    recent = comparison(n=5, difference=-0.1, ci_low=-0.2)
    decision = gate(recent, comparison(difference=-0.5), GateSpec())
    assert not decision.promote
    assert len(decision.reasons) == 4
    nan = float("nan")
    decision = gate(comparison(difference=nan, ci_low=nan), comparison(), GateSpec())
    assert not decision.promote


def test_confusion_per_segment_and_flips() -> None:
    scored = small()
    table = confusion(TASK, scored)
    assert list(table) == [*LABELS, "other"]
    assert table["billing"] == {**dict.fromkeys([*LABELS, "other"], 0), "billing": 1, "shipping": 1}
    assert table["technical"]["other"] == 1
    assert sum(sum(row.values()) for row in table.values()) == 6

    segments = per_segment(TASK, scored)
    assert list(segments) == ["app", "none", "web"]
    assert segments["app"]["accuracy"] == 1.0
    assert segments["web"]["accuracy"] == pytest.approx(1 / 3)
    assert segments["none"]["n"] == 1

    champion, challenger = paired([True, True, False, False], [True, False, True, False])
    result = flips(champion, challenger)
    assert [f["prompt"] for f in result["challenger_wrong_champion_right"]] == [champion[1].prompt]
    assert result["challenger_right_champion_wrong"] == [
        {
            "prompt": champion[2].prompt,
            "target": " billing",
            "champion": " shipping",
            "challenger": " billing",
            "segment": "web",
        }
    ]


def test_error_analysis_caps_flips_and_is_json() -> None:
    champion, challenger = paired([True] * 60 + [False] * 10, [False] * 60 + [True] * 10)
    analysis = error_analysis(TASK, {"recent": (champion, challenger)})
    entry = json.loads(json.dumps(analysis))["recent"]
    assert len(entry["flips"]["challenger_wrong_champion_right"]) == 50
    assert entry["flip_counts"]["challenger_wrong_champion_right"] == 60
    assert entry["metrics"]["champion"]["accuracy"] == pytest.approx(60 / 70)
    assert entry["confusion"]["challenger"]["billing"]["returns"] == 60
    assert set(entry["per_segment"]["challenger"]) == {"web"}


def test_write_report_writes_both_files(tmp_path: Path) -> None:
    champion, challenger = paired([i < 40 for i in range(100)], [i < 80 for i in range(100)])
    recent = compare(champion, challenger, confidence=0.95, samples=500)
    golden = compare(champion[:50], challenger[:50], confidence=0.95, samples=500)
    decision = gate(recent, golden, GateSpec())
    analysis = error_analysis(
        TASK, {"golden": (champion[:50], challenger[:50]), "recent": (champion, challenger)}
    )
    paths = write_report(analysis, {"golden": golden, "recent": recent}, decision, tmp_path / "out")
    assert [p.name for p in paths] == ["error_analysis.json", "report.md"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(analysis))
    report = paths[1].read_text()
    assert decision.promote
    assert "Decision: PROMOTE" in report
    assert decision.reasons[0] in report
    assert "| recent | accuracy (gate) | 0.400 | 0.800 | +0.400 |" in report
    assert "true \\ predicted" in report
    assert "Challenger right, champion wrong (fixes)**: 40" in report
    assert "(30 more not shown)" in report

    rejected = gate(compare(champion, champion, 0.95, 200), golden, GateSpec())
    report = write_report(analysis, {"recent": recent}, rejected, tmp_path)[1].read_text()
    assert "Decision: REJECT" in report
