"""When ops hear of drift: once per episode, again when it grows or lasts, and its end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from refinery.common.events import DriftMetric, EpisodeKind, Severity
from refinery.monitor.notices import (
    AlertEpisode,
    Decision,
    NoticePolicy,
    decide,
    decide_each,
    open_episodes,
    severity_of,
)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = NoticePolicy(repeat_minutes=30, resolve_after=2)


def run(windows: list[tuple[list[str], Severity]], minutes: float = 1.0) -> list[Decision]:
    """Decide a series of windows ``minutes`` long, each on the episode the last left."""
    episode: AlertEpisode | None = None
    decisions = []
    for i, (drifted, severity) in enumerate(windows):
        start = T0 + timedelta(minutes=i * minutes)
        decision = decide(
            POLICY, episode, drifted, severity, start, start + timedelta(minutes=minutes)
        )
        decisions.append(decision)
        episode = decision.episode
    return decisions


def test_a_sustained_drift_notifies_once_and_its_end_once() -> None:
    windows: list[tuple[list[str], Severity]] = [([], "warning")]
    windows += [(["latency_ms"], "warning")] * 10 + [([], "warning")] * 3
    decisions = run(windows)
    assert [d.notice for d in decisions] == [None, "opened"] + [None] * 9 + [None, "resolved", None]
    assert all(d.began == T0 + timedelta(minutes=1) for d in decisions[1:13])
    assert decisions[12].episode is None and decisions[13].began is None
    assert [d.detailed for d in decisions].count(True) == 1  # one report with widgets and copy


def test_a_new_column_or_a_rise_to_critical_escalates_once() -> None:
    decisions = run(
        [
            (["latency_ms"], "warning"),
            (["latency_ms", "segment"], "warning"),  # a column not notified yet
            (["segment"], "warning"),
            (["latency_ms"], "warning"),
            (["segment", "thumbs_down_rate"], "critical"),  # a new column and a rise
            (["segment"], "warning"),  # lower again: no news
        ]
    )
    assert [d.notice for d in decisions] == [
        "opened",
        "escalated",
        None,
        None,
        "escalated",
        None,
    ]
    assert decisions[-1].episode is not None and decisions[-1].episode.severity == "critical"


def test_a_drift_that_lasts_reminds_every_repeat_minutes() -> None:
    decisions = run([(["segment"], "warning")] * 13, minutes=5)  # 65 minutes
    reminders = [i for i, d in enumerate(decisions) if d.notice == "reminder"]
    assert decisions[0].notice == "opened" and reminders == [6, 12]  # at 30 and 60 minutes


def test_one_stable_window_inside_an_episode_does_not_end_it() -> None:
    decisions = run(
        [(["segment"], "warning"), ([], "warning"), (["segment"], "warning"), ([], "warning")]
    )
    assert [d.notice for d in decisions] == ["opened", None, None, None]
    assert decisions[-1].episode is not None and decisions[-1].episode.stable == 1


def test_a_resolved_notice_carries_the_episodes_highest_severity() -> None:
    decisions = run([(["thumbs_down_rate"], "critical"), ([], "warning"), ([], "warning")])
    assert decisions[-1].notice == "resolved" and decisions[-1].severity == "critical"


def test_the_episode_survives_its_json() -> None:
    [_, second] = run([(["segment"], "warning"), ([], "warning")])
    assert second.episode is not None
    assert AlertEpisode.from_json(second.episode.to_json()) == second.episode


def test_severity_is_critical_for_thumbs_down_or_half_the_tests() -> None:
    metrics = [
        DriftMetric(column=c, method="ks", score=0.5, threshold=0.01, drifted=False)
        for c in ("a", "b", "c", "d")
    ]
    assert severity_of(["a"], metrics) == "warning"
    assert severity_of(["a", "b"], metrics) == "critical"
    assert severity_of(["thumbs_down_rate"], metrics) == "critical"


def test_quality_and_operational_drift_are_episodes_of_their_own() -> None:
    """A load test drifts latency for as long as it runs: the data's drift beside it opens,
    grows and resolves on its own columns, and each kind's severity is its own."""
    metrics = [
        DriftMetric(column=c, method="ks", score=0.5, threshold=0.01, drifted=False)
        for c in ("latency_ms", "segment", "prompt_length", "thumbs_down_rate")
    ]
    windows = [
        ["latency_ms"],
        ["latency_ms", "segment", "thumbs_down_rate"],
        ["latency_ms", "segment"],
        ["latency_ms"],
        ["latency_ms"],
        [],
        [],
    ]
    episodes: dict[EpisodeKind, AlertEpisode] = {}
    seen = []
    for i, drifted in enumerate(windows):
        start = T0 + timedelta(minutes=i)
        decisions = decide_each(
            POLICY, episodes, drifted, metrics, start, start + timedelta(minutes=1)
        )
        seen.append({kind: (d.notice, d.severity) for kind, d in decisions.items()})
        episodes = open_episodes(decisions)
    assert seen == [
        {"operational": ("opened", "warning")},
        {"quality": ("opened", "critical"), "operational": (None, "warning")},
        {"quality": (None, "warning"), "operational": (None, "warning")},
        {"quality": (None, "warning"), "operational": (None, "warning")},
        {"quality": ("resolved", "critical"), "operational": (None, "warning")},
        {"operational": (None, "warning")},
        {"operational": ("resolved", "warning")},
    ]
    assert episodes == {}
