"""The trigger policy: persistence, enough labels, cooldown, stable ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.common.task import DriftSpec
from services.monitor.triggers import TriggerState, on_promotion, on_window

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
