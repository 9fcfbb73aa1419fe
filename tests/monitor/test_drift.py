"""Drift detection on generated traffic: the new product line is caught, the old is not."""

from __future__ import annotations

import math
import random
import uuid

import pytest
from evidently import Dataset, Report
from evidently.metrics import ValueDrift

from refinery.common.events import PredictionEvent
from refinery.common.settings import REPO_ROOT
from refinery.common.task import load_task
from refinery.demo.corpus import generate
from refinery.monitor.drift import (
    NUMERIC,
    THUMBS_DOWN,
    Row,
    ThumbsCount,
    detect_drift,
    thumbs_down_p_value,
)

TASK = load_task(REPO_ROOT / "refinery.yaml").task


def rows(domain: str, n: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    out = []
    for ex in generate(TASK, n, seed=seed, domain=domain):
        p = PredictionEvent(
            prediction_id=str(uuid.uuid4()),
            endpoint="completions",
            prompt=ex.prompt,
            completion=ex.completion,
            model="m",
            model_version="1",
            served_name="m",
            prompt_tokens=len(ex.prompt) // 4,
            completion_tokens=2,
            latency_ms=rng.gauss(15, 2),
            segment=domain,
        )
        out.append(Row.of(p, TASK))
    return out


def test_stable_traffic_raises_no_alarm_over_many_windows() -> None:
    reference = rows("retail", 400, seed=1)
    false_alarms = sum(
        bool(
            detect_drift(
                reference, rows("retail", 200, seed=100 + w), p_value=0.001
            ).drifted_columns
        )
        for w in range(10)
    )
    assert false_alarms <= 1  # 10 windows x 9 tests at p < 0.001


def test_new_product_line_is_detected_in_one_window() -> None:
    reference = rows("retail", 400, seed=1)
    current = rows("retail", 100, seed=2) + rows("smart_home", 100, seed=3)
    result = detect_drift(reference, current, p_value=0.001)
    assert {"prompt_oov_share", "segment"} <= set(result.drifted_columns)


@pytest.mark.parametrize(
    ("reference", "current", "low"),
    [
        (ThumbsCount(20, 200), ThumbsCount(60, 200), True),
        (ThumbsCount(20, 200), ThumbsCount(22, 200), False),
        (ThumbsCount(60, 200), ThumbsCount(20, 200), False),  # fewer thumbs-down is no alarm
        (ThumbsCount(0, 0), ThumbsCount(5, 10), False),
    ],
)
def test_thumbs_down_rate_test(reference: ThumbsCount, current: ThumbsCount, low: bool) -> None:
    assert (thumbs_down_p_value(reference, current) < 0.001) is low


def test_thumbs_down_rise_is_reported_as_a_drifted_column() -> None:
    reference = rows("retail", 200, seed=1)
    result = detect_drift(
        reference,
        rows("retail", 100, seed=5),
        p_value=0.001,
        reference_thumbs=ThumbsCount(10, 150),
        current_thumbs=ThumbsCount(45, 150),
    )
    assert result.drifted_columns == [THUMBS_DOWN]


REPLY = load_task(REPO_ROOT / "tasks" / "reply.yaml").task


def reply_rows(domain: str, n: int, seed: int, refusal_share: float = 0.0) -> list[Row]:
    """Free-text traffic: tickets answered with the reference reply (or a refusal)."""
    rng = random.Random(seed)
    out = []
    for ex in generate(REPLY, n, seed=seed, domain=domain):
        answer = " I can't help with that." if rng.random() < refusal_share else ex.completion
        p = PredictionEvent(
            prediction_id=str(uuid.uuid4()),
            endpoint="completions",
            prompt=ex.prompt,
            completion=answer,
            model="m",
            model_version="1",
            served_name="m",
            prompt_tokens=len(ex.prompt) // 4,
            completion_tokens=len(answer) // 4,
            latency_ms=rng.gauss(15, 2),
            segment=domain,
        )
        out.append(Row.of(p, REPLY))
    return out


def test_free_text_is_watched_by_meaning_and_answer_kind_not_label() -> None:
    reference = reply_rows("retail", 400, seed=21)
    stable = detect_drift(reference, reply_rows("retail", 200, seed=22), 0.001, free_text=True)
    columns = {m.column: m for m in stable.metrics}
    assert "label" not in columns and "answer_kind" in columns
    assert columns["prompt_embedding"].method == "embedding_classifier_auc"
    assert not columns["prompt_embedding"].drifted, columns["prompt_embedding"]
    assert not columns["completion_embedding"].drifted, columns["completion_embedding"]
    assert not columns["answer_kind"].drifted

    shifted = reply_rows("smart_home", 160, seed=23) + reply_rows("retail", 40, seed=24)
    drifted = {m.column: m for m in detect_drift(reference, shifted, 0.001, free_text=True).metrics}
    assert drifted["prompt_embedding"].drifted and drifted["completion_embedding"].drifted

    refusing = reply_rows("retail", 200, seed=25, refusal_share=0.3)
    refused = {
        m.column: m for m in detect_drift(reference, refusing, 0.001, free_text=True).metrics
    }
    assert refused["answer_kind"].drifted


def test_one_key_flooding_thumbs_down_cannot_drift_the_rate() -> None:
    # The app's key rated the reference (10% down) and rates the window the same way.
    reference = ThumbsCount(20, 200, (("app", 20, 200),))
    calm = ThumbsCount(6, 60, (("app", 6, 60),))
    # A key that never rated before floods 500 thumbs-down: it has no weight.
    flood = ThumbsCount(506, 560, (("app", 6, 60), ("flood", 500, 500)))
    assert thumbs_down_p_value(reference, flood) == pytest.approx(
        thumbs_down_p_value(reference, calm)
    )
    assert thumbs_down_p_value(reference, calm) > 0.3
    # Counted as one pool, the same flood is a certain alarm.
    assert thumbs_down_p_value(ThumbsCount(20, 200), ThumbsCount(506, 560)) < 1e-30
    # A key with a tenth of the reference moves the rate by at most a tenth.
    mixed_ref = ThumbsCount(20, 200, (("app", 18, 180), ("small", 2, 20)))
    small_flood = ThumbsCount(506, 560, (("app", 6, 60), ("small", 500, 500)))
    assert thumbs_down_p_value(mixed_ref, small_flood) > 1e-3
    # The app's own users turning unhappy is drift, whatever the other keys do.
    unhappy = ThumbsCount(33, 80, (("app", 30, 60), ("small", 3, 20)))
    assert thumbs_down_p_value(mixed_ref, unhappy) < 1e-6


def test_the_ks_p_values_are_evidentlys() -> None:
    """The monitor runs the KS test itself (Evidently's report rendered plots it threw away):
    the same p-values as Evidently's "ks" ValueDrift, on a stable and a shifted window."""
    reference = rows("retail", 400, seed=1)
    for current in (rows("retail", 200, seed=4), rows("smart_home", 200, seed=3)):
        result = detect_drift(reference, current, p_value=0.001)
        columns = [m.column for m in result.metrics if m.method == "ks"]
        assert columns == list(NUMERIC)
        snapshot = Report([ValueDrift(column=c, method="ks") for c in columns]).run(
            Dataset.from_pandas(result.current, data_definition=result.definition),
            Dataset.from_pandas(result.reference, data_definition=result.definition),
        )
        theirs = [float(m["value"]) for m in snapshot.dict()["metrics"]]
        ours = [m.score for m in result.metrics if m.method == "ks"]
        assert [1.0 if math.isnan(t) else t for t in theirs] == pytest.approx(ours, rel=1e-12)
    assert any(t < 0.001 / 8 for t in ours)  # the shifted window: some column drifted
