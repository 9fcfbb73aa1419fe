"""Evaluation: per-item scores, metrics, the paired comparison, the gate and the report, on
hand-made items; semantic similarity with the real offline embedding model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sklearn.metrics import f1_score

from refinery.common.similarity import cosine, embed
from refinery.common.task import GateMetric, GateSpec, TaskFile, TaskObjective
from refinery.retrainer.evaluation import (
    PairedComparison,
    Scored,
    compare,
    confusion,
    error_analysis,
    flips,
    item_scores,
    metrics,
    per_segment,
    score_outputs,
    write_report,
)
from refinery.retrainer.gate import gate, main_metric

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
    return score_outputs(TASK, prompts, targets, outputs, segments, metric="accuracy")


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
        score_outputs(TASK, ["a"], [" billing"], [], [None], metric="accuracy")


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
    assert main_metric(TaskFile(task=TASK)) == "accuracy"


def test_generation_metrics() -> None:
    targets = [" the parcel left the warehouse today", " your refund is on its way", " hello"]
    outputs = [" the parcel left the warehouse today ", " your refund is coming soon", " bye"]
    scored = score_outputs(GENERATION, ["a", "b", "c"], targets, outputs, [None] * 3, metric="chrf")
    result = metrics(GENERATION, scored)
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["n"] == 3
    assert 0 < result["bleu"] <= 100
    assert 0 < result["chrf"] <= 100
    # The gate's per-item mean is on 0-1, next to the corpus-level 0-100 chrF.
    assert result["sentence_chrf"] == pytest.approx(sum(s.score for s in scored) / 3)
    assert scored[0].score == 1.0 and 0 < scored[1].score < 1
    # Free text is gated on chrF unless the task file says otherwise (was exact match).
    assert main_metric(TaskFile(task=GENERATION)) == "chrf"


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


# -- free text: gated on a graded metric ----------------------------------------------------

REPLIES = [  # (reference, a close paraphrase of it)
    (
        "Your order {n} shipped today and should arrive within {d} days.",
        "Your order {n} was shipped today and should arrive in {d} days.",
    ),
    (
        "We have refunded {p} dollars to your card for order {n}.",
        "We refunded {p} dollars to your card for order {n}.",
    ),
    (
        "Please reset your password from the login page, then sign in again with account {n}.",
        "Please reset the password on the login page and sign in again with account {n}.",
    ),
    (
        "The replacement for order {n} will leave our warehouse in {d} days.",
        "The replacement for order {n} leaves our warehouse within {d} days.",
    ),
    (
        "Your invoice {n} for {p} dollars is attached to this message.",
        "Invoice {n} for {p} dollars is attached to this message.",
    ),
]
OFF_TOPIC = [
    "The museum opens at nine on Sundays.",
    "Our cafeteria serves tomato soup every Tuesday.",
    "Mountains look lovely in the autumn light.",
    "The quarterly meeting moved to room {n}.",
]


def replies(count: int, start: int = 0) -> tuple[list[str], list[str], list[str], list[str]]:
    """Prompts, references, close paraphrases (never exact) and off-topic answers."""
    prompts, refs, close, off = [], [], [], []
    for i in range(start, start + count):
        slots = {"n": 1000 + 37 * i, "d": 2 + i % 5, "p": 10 + i}
        ref, para = REPLIES[i % len(REPLIES)]
        prompts.append(f"Say: customer message {i}\n")
        refs.append(" " + ref.format(**slots))
        close.append(" " + para.format(**slots))
        off.append(" " + OFF_TOPIC[i % len(OFF_TOPIC)].format(**slots))
    return prompts, refs, close, off


def paraphrase_vs_off_topic(
    count: int, start: int = 0
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Prompts, references, the champion off-topic, the challenger paraphrasing."""
    prompts, refs, close, off = replies(count, start)
    return prompts, refs, off, close


def scored_pair(
    metric: GateMetric,
    prompts: list[str],
    refs: list[str],
    champion: list[str],
    challenger: list[str],
) -> tuple[list[Scored], list[Scored]]:
    segments: list[str | None] = [None] * len(prompts)
    return (
        score_outputs(GENERATION, prompts, refs, champion, segments, metric=metric),
        score_outputs(GENERATION, prompts, refs, challenger, segments, metric=metric),
    )


def gate_spec(metric: GateMetric) -> GateSpec:
    """The gate section of a generation task file that names ``metric``."""
    return TaskFile(task=GENERATION, gate=GateSpec(metric=metric)).gate


def test_item_scores_are_on_a_zero_to_one_scale() -> None:
    _, refs, close, off = replies(5)
    for metric in ("exact_match", "chrf", "bleu", "semantic"):
        same = item_scores(GENERATION, metric, refs, [f"{r}  " for r in refs])
        assert same == [1.0] * 5, metric
        for para, unrelated in zip(
            item_scores(GENERATION, metric, refs, close),
            item_scores(GENERATION, metric, refs, off),
            strict=True,
        ):
            assert 0.0 <= unrelated <= para <= 1.0, metric
    assert item_scores(GENERATION, "exact_match", refs, close) == [0.0] * 5
    chat = TaskObjective(name="c", kind="chat")  # scored exactly like generation
    assert item_scores(chat, "chrf", refs, close) == item_scores(GENERATION, "chrf", refs, close)
    with pytest.raises(ValueError, match=r"gate\.metric 'accuracy'"):
        item_scores(GENERATION, "accuracy", refs, close)
    with pytest.raises(ValueError, match="0-1 scale"):
        Scored("p", "t", "o", None, 1.5)


def test_semantic_similarity_prefers_a_paraphrase() -> None:
    reference = "Your order shipped today and should arrive within three days."
    paraphrase = "Your package was sent out today and will get to you in about three days."
    unrelated = "The museum is closed on public holidays."
    close, far = cosine([paraphrase, unrelated], [reference, reference])
    assert close > 0.6
    assert far < 0.3
    vectors = embed([reference, paraphrase, unrelated])
    assert vectors.shape == (3, 384)
    assert [round(float(v @ v), 4) for v in vectors] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("metric", ["chrf", "semantic"])
def test_a_paraphrasing_challenger_passes_on_a_graded_metric(metric: GateMetric) -> None:
    recent = compare(*scored_pair(metric, *paraphrase_vs_off_topic(40)), 0.95, 2000)
    golden = compare(*scored_pair(metric, *paraphrase_vs_off_topic(12, start=100)), 0.95, 2000)
    assert recent.metric == golden.metric == metric
    assert recent.difference > 0.3
    assert recent.ci_low > 0.3
    assert recent.challenger < 1  # paraphrases, not copies of the references
    decision = gate(recent, golden, gate_spec(metric))
    assert decision.promote, decision.reasons
    assert f"recent traffic: {metric} {recent.difference:+.3f}" in decision.reasons[1]


def test_exact_match_sees_no_improvement_in_paraphrases() -> None:
    recent = compare(*scored_pair("exact_match", *paraphrase_vs_off_topic(40)), 0.95, 500)
    golden = compare(
        *scored_pair("exact_match", *paraphrase_vs_off_topic(40, start=100)), 0.95, 500
    )
    assert (recent.champion, recent.challenger, recent.difference) == (0.0, 0.0, 0.0)
    assert (recent.ci_low, recent.ci_high, recent.mcnemar_p) == (0.0, 0.0, 1.0)
    decision = gate(recent, golden, gate_spec("exact_match"))
    assert not decision.promote
    assert "recent traffic: exact_match +0.000" in decision.reasons[0]


def test_a_challenger_worse_on_golden_chrf_is_rejected_with_the_numbers() -> None:
    recent = compare(*scored_pair("chrf", *paraphrase_vs_off_topic(40)), 0.95, 2000)
    prompts, refs, close, off = replies(40, start=100)
    # The challenger forgot a quarter of the golden set: it answers those off-topic.
    worse = [o if i % 4 == 0 else c for i, (c, o) in enumerate(zip(close, off, strict=True))]
    golden = compare(*scored_pair("chrf", prompts, refs, close, worse), 0.95, 2000)
    assert golden.difference < -gate_spec("chrf").golden_tolerance
    decision = gate(recent, golden, gate_spec("chrf"))
    assert not decision.promote
    assert decision.reasons == [
        f"golden set: chrf {golden.difference:+.3f} ({golden.champion:.3f} -> "
        f"{golden.challenger:.3f}, 95% CI {golden.ci_low:+.3f}..{golden.ci_high:+.3f}) "
        "drops more than the -0.020 tolerance"
    ]
    # One forgotten item of 40 costs less than the 0.02 tolerance on chrF's 0-1 scale.
    slip = [o if i == 0 else c for i, (c, o) in enumerate(zip(close, off, strict=True))]
    golden = compare(*scored_pair("chrf", prompts, refs, close, slip), 0.95, 2000)
    assert -0.02 < golden.difference < 0
    assert gate(recent, golden, gate_spec("chrf")).promote


def test_gate_fails_closed_on_a_missing_set_or_another_metric() -> None:
    decision = gate(comparison(), None, GateSpec())
    assert decision == gate(comparison(), None, gate_spec("chrf"))
    assert not decision.promote
    assert decision.reasons == ["no golden test examples to compare on"]
    decision = gate(comparison(metric="chrf"), comparison(metric="chrf"), gate_spec("semantic"))
    assert not decision.promote
    assert decision.reasons == [
        "recent traffic compared on chrf, golden set on chrf, gate.metric is semantic: "
        "no decision across metrics"
    ]
    decision = gate(comparison(metric="chrf"), comparison(), GateSpec())
    assert not decision.promote
    champion, _ = scored_pair("chrf", *paraphrase_vs_off_topic(4))
    _, other = scored_pair("exact_match", *paraphrase_vs_off_topic(4))
    with pytest.raises(ValueError, match="metrics"):
        compare(champion, other, confidence=0.95, samples=100)


def test_report_shows_the_graded_gate_metric_and_its_scale(tmp_path: Path) -> None:
    champion, challenger = scored_pair("chrf", *paraphrase_vs_off_topic(40))
    recent = compare(champion, challenger, 0.95, 500)
    golden = compare(champion[:20], challenger[:20], 0.95, 500)
    decision = gate(recent, golden, gate_spec("chrf"))
    analysis = error_analysis(GENERATION, {"recent": (champion, challenger)})
    assert analysis["recent"]["metrics"]["challenger"]["sentence_chrf"] == pytest.approx(
        recent.challenger
    )
    report = write_report(analysis, {"recent": recent}, decision, tmp_path)[1].read_text()
    assert f"| recent | chrf (gate) | {recent.champion:.3f} | {recent.challenger:.3f} |" in report
    assert "| recent | chrf | " in report  # corpus-level, 0-100
    assert "| recent | sentence_chrf |" not in report  # the gate row already is that
    assert "0-1 scale" in report
    assert "Challenger right, champion wrong (fixes)**: 40" in report
