"""When ops hear of drift: once per drift episode, not once per drifted window.

A sustained drift (a new product line, or latency under a load test) drifts window after
window; a webhook post for each (at 20 requests/s, one every 10 s) buries the news that
matters, and each one's detailed report cost the host seconds of plotting. So every drifted
window still has its :class:`~refinery.common.events.AlertEvent` on Kafka, but ops are
notified (the webhook, the report's per-column widgets and HTML copy) only when:

``opened``     a window drifts and no episode is open;
``escalated``  the episode's severity rises, or a column drifts that it had not notified;
``reminder``   it goes on ``repeat_minutes`` after its last notice (window end times);
``resolved``   ``resolve_after`` windows in a row are stable: the episode ends.

Each kind of column has episodes of its own (``EpisodeKind``): quality (inputs, answers,
ratings) and operational (latency). Latency drifts for as long as a load test runs; the
data's drift beside it still ends, and ops hear that it did.

Pure logic over window times, so a window closed again after a crash decides alike; the
episodes are part of the windows' committed state (refinery/monitor/windows.py). A
promotion does not end an episode: the new champion's windows do, once they are stable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from refinery.common.events import (
    EPISODE_KINDS,
    DriftMetric,
    EpisodeKind,
    Notice,
    Severity,
    columns_of,
)
from refinery.monitor.drift import THUMBS_DOWN

FIRING: tuple[Notice, ...] = ("opened", "escalated", "reminder")
_RANK: dict[Severity, int] = {"warning": 0, "critical": 1}


def severity_of(drifted_columns: list[str], metrics: list[DriftMetric]) -> Severity:
    """Critical when users rate the answers worse, or half the tests drifted."""
    critical = THUMBS_DOWN in drifted_columns or len(drifted_columns) * 2 >= len(metrics)
    return "critical" if critical else "warning"


@dataclass(frozen=True)
class NoticePolicy:
    repeat_minutes: float = 60.0
    resolve_after: int = 2


@dataclass(frozen=True)
class AlertEpisode:
    """An open drift episode, as far as ops were told of it."""

    began: datetime  # the start of its first drifted window
    severity: Severity  # the highest notified
    columns: tuple[str, ...]  # every column notified in it
    notified_at: datetime  # the end of the window of its last notice
    stable: int = 0  # stable windows in a row since its last drifted one

    def to_json(self) -> dict[str, Any]:
        return {
            "began": self.began.isoformat(),
            "severity": self.severity,
            "columns": list(self.columns),
            "notified_at": self.notified_at.isoformat(),
            "stable": self.stable,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AlertEpisode:
        return cls(
            began=datetime.fromisoformat(raw["began"]),
            severity=raw["severity"],
            columns=tuple(raw["columns"]),
            notified_at=datetime.fromisoformat(raw["notified_at"]),
            stable=raw["stable"],
        )


@dataclass(frozen=True)
class Decision:
    """A closed window's notice (None: ops are not told of it) and the episode after it."""

    notice: Notice | None
    episode: AlertEpisode | None
    began: datetime | None  # the start of the episode the window is part of, or ended
    severity: Severity  # the window's, or for ``resolved`` the highest its episode reached

    @property
    def detailed(self) -> bool:
        """Whether the window's report gets the per-column widgets and an HTML copy."""
        return self.notice in FIRING


def decide(
    policy: NoticePolicy,
    episode: AlertEpisode | None,
    drifted_columns: list[str],
    severity: Severity,
    start: datetime,
    end: datetime,
) -> Decision:
    """The notice for a window from ``start`` to ``end`` that drifted in ``drifted_columns``
    (none: stable) with ``severity``, given the episode open before it."""
    if not drifted_columns:
        if episode is None:
            return Decision(None, None, None, severity)
        if episode.stable + 1 >= policy.resolve_after:
            return Decision("resolved", None, episode.began, episode.severity)
        return Decision(None, replace(episode, stable=episode.stable + 1), episode.began, severity)
    if episode is None:
        opened = AlertEpisode(start, severity, tuple(drifted_columns), end)
        return Decision("opened", opened, start, severity)
    rose = _RANK[severity] > _RANK[episode.severity]
    new = [c for c in drifted_columns if c not in episode.columns]
    notice: Notice | None = None
    if rose or new:
        notice = "escalated"
    elif (end - episode.notified_at).total_seconds() >= policy.repeat_minutes * 60:
        notice = "reminder"
    if notice is None:
        return Decision(None, replace(episode, stable=0), episode.began, severity)
    highest = severity if rose else episode.severity
    notified = AlertEpisode(episode.began, highest, (*episode.columns, *new), end)
    return Decision(notice, notified, episode.began, severity)


def decide_each(
    policy: NoticePolicy,
    episodes: Mapping[EpisodeKind, AlertEpisode],
    drifted_columns: list[str],
    metrics: list[DriftMetric],
    start: datetime,
    end: datetime,
) -> dict[EpisodeKind, Decision]:
    """:func:`decide` for each kind of episode the window drifted in or that was open
    before it, on that kind's columns alone (its severity too)."""
    decisions: dict[EpisodeKind, Decision] = {}
    for kind in EPISODE_KINDS:
        columns = columns_of(kind, drifted_columns)
        if columns or kind in episodes:
            severity = severity_of(columns, metrics)
            decisions[kind] = decide(policy, episodes.get(kind), columns, severity, start, end)
    return decisions


def open_episodes(decisions: Mapping[EpisodeKind, Decision]) -> dict[EpisodeKind, AlertEpisode]:
    """The episodes still open after a window's ``decisions``."""
    return {k: d.episode for k, d in decisions.items() if d.episode is not None}
