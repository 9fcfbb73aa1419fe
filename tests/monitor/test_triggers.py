"""The trigger policy: persistence, enough labels, cooldown, stable ids, retries after a
rejection, refinement rounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from refinery.common.task import DriftSpec
from refinery.monitor.drift import ThumbsCount
from refinery.monitor.triggers import (
    TriggerState,
    on_champion_rating,
    on_labels,
    on_promotion,
    on_refinement_window,
    on_rejection,
    on_window,
)

SPEC = DriftSpec(persist_windows=2, min_examples=50, min_new_labels=0, cooldown_minutes=30)
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_one_drifted_window_is_not_enough() -> None:
    state = TriggerState(examples_since_training=500)
    assert on_window(SPEC, state, "1", at(0), ["segment"]) is None
    assert on_window(SPEC, state, "1", at(5), []) is None  # the run is broken
    assert on_window(SPEC, state, "1", at(10), ["segment"]) is None


def test_persistent_drift_with_labels_triggers_once_per_episode() -> None:
    state = TriggerState(examples_since_training=500)
    on_window(SPEC, state, "3", at(0), ["segment"])
    trigger = on_window(SPEC, state, "3", at(5), ["label", "segment"])
    assert trigger is not None
    assert trigger.trigger_id == "drift-v3-20261129T120000"
    assert trigger.evidence["drifted_columns"] == ["label", "segment"]
    assert trigger.window_start == at(0) and trigger.window_end == at(5)
    assert on_window(SPEC, state, "3", at(10), ["segment"]) is None  # cooldown
    later = on_window(SPEC, state, "3", at(40), ["segment"])
    assert later is not None and later.trigger_id == trigger.trigger_id  # same episode


def test_too_few_labels_waits() -> None:
    state = TriggerState(examples_since_training=10)
    on_window(SPEC, state, "1", at(0), ["segment"])
    assert on_window(SPEC, state, "1", at(5), ["segment"]) is None
    state.examples_since_training = 60
    assert on_window(SPEC, state, "1", at(10), ["segment"]) is not None


def test_promotion_resets_the_episode_and_the_label_count() -> None:
    state = TriggerState(examples_since_training=500)
    on_window(SPEC, state, "1", at(0), ["segment"])
    on_promotion(state)
    assert state.consecutive == 0 and state.examples_since_training == 0
    state.examples_since_training = 100
    on_window(SPEC, state, "2", at(60), ["label"])
    trigger = on_window(SPEC, state, "2", at(65), ["label"])
    assert trigger is not None and trigger.trigger_id == "drift-v2-20261129T130000"


def test_no_trigger_until_the_drift_brought_enough_new_labels() -> None:
    spec = SPEC.model_copy(update={"min_new_labels": 100})
    state = TriggerState(examples_since_training=500)
    on_window(spec, state, "1", at(0), ["segment"])
    state.labels_in_episode = 60
    assert on_window(spec, state, "1", at(5), ["segment"]) is None
    state.labels_in_episode = 120
    trigger = on_window(spec, state, "1", at(10), ["segment"])
    assert trigger is not None and trigger.evidence["labels_in_episode"] == 120
    on_window(spec, state, "1", at(15), [])
    assert state.labels_in_episode == 0  # a new episode counts afresh


def test_one_keys_flood_of_labels_counts_at_most_as_much_as_all_other_keys() -> None:
    spec = SPEC.model_copy(update={"min_new_labels": 100, "cooldown_minutes": 0})
    state = TriggerState(examples_since_training=500)
    on_window(spec, state, "1", at(0), ["segment"])
    state.labels_in_episode, state.labels_by_key = 330, {"app": 30, "flood": 300}
    assert on_window(spec, state, "1", at(5), ["segment"], max_key_share=0.5) is None  # 60
    state.labels_in_episode, state.labels_by_key = 360, {"app": 60, "flood": 300}
    trigger = on_window(spec, state, "1", at(10), ["segment"], max_key_share=0.5)
    assert trigger is not None and trigger.evidence["labels_counted"] == 120
    # One key alone is not capped: a single app is all the evidence there is.
    state.labels_by_key = {"app": 100}
    assert on_window(spec, state, "1", at(15), ["segment"], max_key_share=0.5) is not None


def test_deciding_on_the_same_window_again_gives_the_same_event() -> None:
    """A crash before the close was recorded: the replay decides again, under the same id."""

    def decide(state: TriggerState, minutes: int) -> str:
        trigger = on_window(SPEC, state, "1", at(minutes), ["segment"])
        assert trigger is not None
        return trigger.event_id

    state = TriggerState(examples_since_training=500)
    on_window(SPEC, state, "1", at(0), ["segment"])
    replayed = TriggerState(**vars(state))
    first = decide(state, 5)
    assert decide(replayed, 5) == first
    assert decide(state, 40) != first  # a later window of the episode asks anew


def test_a_persisted_drift_waiting_for_labels_asks_as_soon_as_they_are_in() -> None:
    """Between windows: no trigger before the drift persisted, one the moment the labels
    are in (not at the next close), then the cooldown as after a close."""
    spec = SPEC.model_copy(update={"min_new_labels": 100})
    state = TriggerState(examples_since_training=500, labels_in_episode=500)
    assert on_labels(spec, state, "1", at(0)) is None  # no episode yet
    on_window(spec, state, "1", at(0), ["segment"])
    assert on_labels(spec, state, "1", at(1)) is None  # one drifted window: not persisted
    state.labels_in_episode = 0
    on_window(spec, state, "1", at(5), ["segment"])  # persisted, waiting for labels
    state.labels_in_episode = 99
    assert on_labels(spec, state, "1", at(6)) is None
    state.labels_in_episode = 100
    asked = on_labels(spec, state, "1", at(7))
    assert asked is not None and asked.window_end == at(7) and asked.window_start == at(0)
    assert asked.evidence["labels_counted"] == 100
    assert on_labels(spec, state, "1", at(8)) is None  # the cooldown holds, between windows
    assert on_window(spec, state, "1", at(10), ["segment"]) is None  # and at the close


# -- retries after a rejection ------------------------------------------------------------
RETRY = SPEC.model_copy(update={"min_new_labels": 100, "retries_after_rejection": 1})


def triggered_with(labels: int) -> TriggerState:
    state = TriggerState(examples_since_training=500)
    on_window(RETRY, state, "1", at(0), ["segment"])
    state.labels_in_episode = labels
    assert on_window(RETRY, state, "1", at(5), ["segment"]) is not None
    return state


def test_a_rejected_challenger_while_the_drift_goes_on_asks_again_once_labels_doubled() -> None:
    state = triggered_with(150)
    on_rejection(state)
    state.labels_in_episode = 299
    assert on_window(RETRY, state, "1", at(10), ["segment"]) is None  # within the cooldown
    state.labels_in_episode = 300
    retry = on_window(RETRY, state, "1", at(15), ["segment"])
    assert retry is not None
    assert retry.trigger_id == "drift-v1-20261129T120000-retry1"  # the retrainer trains anew
    assert retry.evidence["retry"] == 1 and retry.window_start == at(0)
    on_rejection(state)  # the retry was rejected too: no more retries in this episode
    state.labels_in_episode = 10_000
    assert on_window(RETRY, state, "1", at(20), ["segment"]) is None


def test_without_a_rejection_more_labels_do_not_skip_the_cooldown() -> None:
    state = triggered_with(150)
    state.labels_in_episode = 1_000
    assert on_window(RETRY, state, "1", at(10), ["segment"]) is None


def test_a_rejection_after_the_drift_ended_or_with_no_retries_asks_nothing() -> None:
    state = triggered_with(150)
    on_window(RETRY, state, "1", at(10), [])  # the episode is over
    on_rejection(state)
    assert state.retry_at is None
    spec = RETRY.model_copy(update={"retries_after_rejection": 0})
    state = TriggerState(examples_since_training=500)
    on_window(spec, state, "1", at(0), ["segment"])
    state.labels_in_episode = 150
    assert on_window(spec, state, "1", at(5), ["segment"]) is not None
    on_rejection(state)
    state.labels_in_episode = 1_000
    assert on_window(spec, state, "1", at(10), ["segment"]) is None


def test_a_pending_retry_survives_a_restart() -> None:
    state = triggered_with(150)
    on_rejection(state)
    restored = TriggerState.from_json(state.to_json())
    assert restored == state and restored.retry_at == 300


# -- refinement rounds -------------------------------------------------------------------
REFINE = DriftSpec(
    persist_windows=1, min_examples=0, min_new_labels=100, cooldown_minutes=30, refinement_rounds=1
)
BEFORE = ThumbsCount(down=2, total=200)  # the champion's reference: 1% thumbs-down
STABLE = ThumbsCount(down=1, total=100)  # a window without drift


def promoted_after_drift(state: TriggerState) -> None:
    on_window(REFINE, state, "1", at(3), [], current_thumbs=STABLE)
    state.labels_in_episode = 500
    trigger = on_window(
        REFINE, state, "1", at(5), ["segment"], window_start=at(4), reference_thumbs=BEFORE
    )
    assert trigger is not None and trigger.window_start == at(4)
    on_promotion(state)


def rate(state: TriggerState, down: int, total: int) -> None:
    for i in range(total):
        on_champion_rating(state, i < down, key_id="")


def test_a_promoted_challenger_that_still_lags_gets_one_refinement_round() -> None:
    state = TriggerState()
    promoted_after_drift(state)
    rate(state, down=5, total=99)
    assert on_refinement_window(REFINE, state, "2", at(6)) is None  # too few ratings yet
    rate(state, down=11, total=101)  # 8% thumbs-down against 1% before the drift
    trigger = on_refinement_window(REFINE, state, "2", at(7))
    assert trigger is not None
    assert trigger.trigger_id == "refine-v2-20261129T120400"
    assert trigger.window_start == at(4)  # it learns from all rated since the drift began
    assert trigger.evidence["thumbs_down_since_promotion"] == [16, 200]
    assert trigger.evidence["thumbs_down_before_drift"] == [3, 300]
    assert on_refinement_window(REFINE, state, "2", at(8)) is None  # asked once
    on_promotion(state)  # the round's challenger: no rounds left, however it does
    rate(state, down=20, total=200)
    assert on_refinement_window(REFINE, state, "3", at(9)) is None
    assert state.bar is None


def test_a_challenger_as_good_as_before_the_drift_is_left_alone_and_the_watch_ends() -> None:
    state = TriggerState()
    promoted_after_drift(state)
    for minute in range(6, 10):
        rate(state, down=1, total=100)  # 1%: no lag
        assert on_refinement_window(REFINE, state, "2", at(minute)) is None
    assert not state.refining and state.bar is None  # 400 ratings: caught up


def test_a_rollback_ends_the_refinement_and_a_re_rating_replaces_its_earlier_one() -> None:
    state = TriggerState()
    promoted_after_drift(state)
    rate(state, down=0, total=10)
    on_champion_rating(state, False, "", sign=-1)
    on_champion_rating(state, True, "")
    assert state.since == [1, 10]
    on_promotion(state, "rolled_back")
    rate(state, down=100, total=200)
    assert on_refinement_window(REFINE, state, "1", at(7)) is None


def test_refinement_state_survives_a_restart() -> None:
    state = TriggerState()
    promoted_after_drift(state)
    rate(state, down=2, total=7)
    again = TriggerState.from_json(state.to_json())
    assert again == state
