"""The canary's sequential test: valid when checked continuously, and it does decide."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

from refinery.common.events import ExampleEvent, PredictionEvent
from refinery.common.settings import REPO_ROOT
from refinery.common.task import CanarySpec, load_task
from refinery.retrainer.canary import ArmCounts, Verdict, decide, interval
from refinery.retrainer.canary_watch import Evidence, ShadowJudge, Tally

POLICY = CanarySpec(alpha=0.05, margin=0.0, min_per_arm=30, max_per_arm=400)


def _run(
    p_champion: float, p_canary: float, share: float, policy: CanarySpec, rng: random.Random
) -> tuple[Verdict, int]:
    """One canary on simulated ratings, checked after every 5 ratings: verdict, canary n."""
    champion, canary = ArmCounts(), ArmCounts()
    while True:
        for _ in range(5):
            if rng.random() < share:
                canary = canary.add(rng.random() < p_canary)
            else:
                champion = champion.add(rng.random() < p_champion)
        verdict = decide(champion, canary, policy)
        if verdict != "continue":
            return verdict, canary.n


def _naive_z_promotes(champion: ArmCounts, canary: ArmCounts) -> bool:
    """A fixed-sample 95% z-interval, as a dashboard would show it, peeked at each time."""
    if min(champion.n, canary.n) < POLICY.min_per_arm:
        return False
    p1, p2 = champion.rate(), canary.rate()
    se = math.sqrt(p1 * (1 - p1) / champion.n + p2 * (1 - p2) / canary.n) or 1e-9
    return p2 - p1 - 1.96 * se > 0


def test_a_coin_flip_is_seldom_promoted_however_often_it_is_checked() -> None:
    rng = random.Random(7)
    runs = 400
    ended = [_run(0.7, 0.7, 0.3, POLICY, rng) for _ in range(runs)]
    false_promotions = sum(v == "promote" for v, _ in ended) / runs
    wrong = sum(v == "promote" or n < POLICY.max_per_arm for v, n in ended) / runs
    # Any verdict before the budget is wrong here (the arms are equal); the interval's
    # level bounds them all together (+0.015: the simulation's own noise at 400 runs).
    assert wrong <= POLICY.alpha + 0.015, (wrong, false_promotions)
    # ...whereas the fixed-sample interval, peeked at on the same schedule, is fooled often.
    naive = 0
    for _ in range(runs):
        champion, canary = ArmCounts(), ArmCounts()
        while canary.n < POLICY.max_per_arm:
            for _ in range(5):
                if rng.random() < 0.3:
                    canary = canary.add(rng.random() < 0.7)
                else:
                    champion = champion.add(rng.random() < 0.7)
            if _naive_z_promotes(champion, canary):
                naive += 1
                break
    assert naive / runs > 3 * max(false_promotions, 0.01), (naive / runs, false_promotions)


def test_a_clearly_better_canary_is_promoted_and_a_worse_one_rolled_back() -> None:
    rng = random.Random(11)
    better = [_run(0.5, 0.8, 0.2, POLICY, rng) for _ in range(50)]
    worse = [_run(0.8, 0.3, 0.2, POLICY, rng) for _ in range(50)]
    assert sum(v == "promote" for v, _ in better) >= 48
    assert sum(v == "rollback" for v, _ in worse) == 50
    # ...and well before the budget: a worse canary is stopped after few of its answers.
    assert max(n for _, n in worse) < 120, [n for _, n in worse]


def test_no_verdict_before_each_arm_has_its_minimum() -> None:
    assert decide(ArmCounts(29, 0), ArmCounts(0, 29), POLICY) == "continue"
    assert decide(ArmCounts(30, 0), ArmCounts(0, 30), POLICY) == "rollback"


def test_an_undecided_canary_at_its_budget_is_rolled_back() -> None:
    even = ArmCounts(1400, 600)
    assert decide(even, ArmCounts(279, 120), POLICY) == "continue"
    assert decide(even, ArmCounts(280, 120), POLICY) == "rollback"


def test_a_margin_promotes_a_canary_that_is_as_good_and_the_interval_narrows() -> None:
    lenient = CanarySpec(margin=0.05, max_per_arm=100_000)
    assert decide(ArmCounts(7000, 3000), ArmCounts(700, 300), lenient) == "promote"
    strict = CanarySpec(margin=0.0, max_per_arm=100_000)
    assert decide(ArmCounts(7000, 3000), ArmCounts(700, 300), strict) == "continue"
    wide = interval(ArmCounts(70, 30), ArmCounts(7, 3), POLICY)
    narrow = interval(ArmCounts(7000, 3000), ArmCounts(700, 300), POLICY)
    assert wide.low < narrow.low < narrow.estimate < narrow.high < wide.high
    assert math.isclose(narrow.estimate, 0.0, abs_tol=1e-12)


def _example(
    feedback_id: str,
    version: str,
    rating: str,
    completion: str = " billing",
    correction: str | None = None,
    source: str = "user",
) -> ExampleEvent:
    at = datetime(2026, 11, 30, tzinfo=UTC)
    return ExampleEvent(
        feedback_id=feedback_id,
        prediction_id=feedback_id.split(":")[0],
        prompt="Ticket: my card was charged twice\nTeam:",
        completion=completion,
        model_version=version,
        rating=rating,  # type: ignore[arg-type]
        correction=correction,
        label_source=source,  # type: ignore[arg-type]
        predicted_at=at,
        rated_at=at,
    )


def _shadow(shown: str, version: str, completion: str) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=f"{shown}.shadow",
        endpoint="completions",
        prompt="Ticket: my card was charged twice\nTeam:",
        completion=completion,
        model="m",
        model_version=version,
        served_name=f"m-v{version}",
        prompt_tokens=8,
        completion_tokens=1,
        latency_ms=5.0,
        shadow_of=shown,
    )


def test_each_rating_counts_once_per_arm_and_reviewers_do_not_count() -> None:
    tally = Tally("1", "2")
    assert tally.add(_example("p1:u", "1", "up"))
    assert not tally.add(_example("p1:u", "1", "up"))  # redelivered
    assert tally.add(_example("p1:u", "1", "down"))  # re-rated: replaces the up
    assert tally.add(_example("p2:u", "2", "up"))
    assert not tally.add(_example("p3:u", "3", "up"))  # neither arm
    assert not tally.add(_example("p4:r", "2", "down", source="reviewer"))
    assert (tally.champion, tally.canary) == (ArmCounts(0, 1), ArmCounts(1, 0))


def test_a_shadow_answer_is_judged_by_the_rating_of_the_answer_users_saw() -> None:
    task = load_task(REPO_ROOT / "refinery.yaml")
    judge = ShadowJudge(task)
    up = _example("p:u", "1", "up", completion=" billing")
    corrected = _example("p:u", "1", "down", completion=" billing", correction=" shipping")
    down = _example("p:u", "1", "down", completion=" billing")
    assert (judge(up, " billing"), judge(up, " returns")) == (True, False)
    assert (judge(corrected, " shipping"), judge(corrected, " billing")) == (True, False)
    # Thumbs-down alone: the same wrong answer is wrong; another one is anyone's guess.
    assert (judge(down, " billing"), judge(down, " returns")) == (False, None)


def test_shadow_answers_pair_with_their_ratings_in_either_order() -> None:
    task = load_task(REPO_ROOT / "refinery.yaml")
    evidence = Evidence(Tally("1", "2"), ShadowJudge(task))
    evidence.prediction(_shadow("a", "2", " billing"))  # the shadow first...
    evidence.example(_example("a:u", "1", "up", completion=" billing"))
    evidence.example(_example("b:u", "1", "up", completion=" account"))  # ...or the rating
    evidence.prediction(_shadow("b", "2", " billing"))
    evidence.prediction(_shadow("c", "3", " billing"))  # another version's: not ours
    evidence.example(_example("c:u", "1", "up", completion=" billing"))
    tally = evidence.tally
    assert (tally.champion, tally.canary) == (ArmCounts(3, 0), ArmCounts(1, 1))
