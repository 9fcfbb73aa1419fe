"""Read again the records faust's consumer skipped.

A monitor restarted while a backlog waited sometimes never handed the first 4 to 7
records of each partition (or a run in the middle) to its agents: faust-streaming 0.15
moved its read offset past them (likely path: ``Consumer._drain_messages`` drops a record
whose hand-over ``wait_first(callback, suspend_flow)`` gave up on while recovery suspended
the flow, yet records it as read). The group's commit stayed at the gap, so they were read
only after the next rebalance (a CI run lost 14 of 300 examples from its test's view).

The agents tell ``SkippedRecords`` each record they get. A record beyond the next expected
offset of its partition (or beyond the group's committed offset, for a partition's first
record after an assignment) makes it seek back there, again until the skipped records
arrive. Records after the gap come twice; the join and the windows take a record twice
as once.

``commit_past_duplicate_acks`` mends the other half: faust keeps an offset acknowledged
twice (a record delivered again, as above or around a rebalance) twice in its list, and
its commit finds one run of consecutive offsets per interval, which a duplicate cuts: the
commit crawled one offset per 2.8 s after a restart while hundreds were acknowledged
(faust issues robinhood/faust#625, #559), so the lag grew without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

log = logging.getLogger(__name__)
SEEK_ATTEMPTS = 30
SEEK_WAIT_S = 2.0
Committed = dict[tuple[str, int], int]  # (topic, partition) -> the next offset to read


class SkippedRecords:
    """Per partition, the next offset expected; seeks back over a gap via ``seek``."""

    def __init__(self, seek: Callable[[TP, int], Awaitable[Any]]) -> None:
        self._seek = seek
        self._next: dict[TP, int] = {}
        self._first: dict[TP, int] = {}  # the first offset seen since the assignment
        self._seeking: dict[TP, int] = {}  # partition -> the offset being read again
        self._generation = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        self.gaps = 0

    def saw(self, tp: TP, offset: int) -> None:
        """A record reached an agent."""
        target = self._seeking.get(tp)
        if target is not None and offset <= target:
            del self._seeking[tp]  # the skipped records are coming
            log.info("%s[%d]: reading again from offset %d", tp.topic, tp.partition, target)
        elif target is None and (expected := self._next.get(tp)) is not None and offset > expected:
            self._read_again(tp, expected, offset)
        self._first.setdefault(tp, offset)
        self._next[tp] = offset + 1

    def next_offset(self, tp: TP) -> int | None:
        """The offset after the last record of ``tp`` an agent saw since the assignment."""
        return self._next.get(tp)

    def forget_positions(self) -> None:
        """On a rebalance: a partition starts anew where its group committed."""
        self._next.clear()
        self._first.clear()
        self._seeking.clear()
        self._generation += 1

    def expect_committed(self, read: Callable[[], Awaitable[Committed]]) -> None:
        """After an assignment: each partition's first record is its committed offset, as
        ``read`` (run in the background) gives them."""
        self._spawn(self._expect(read, self._generation))

    async def _expect(self, read: Callable[[], Awaitable[Committed]], generation: int) -> None:
        try:
            committed = await read()
        except Exception as exc:  # a broker away: only this check at the start is lost
            log.warning("committed offsets not read: %s", exc)
            return
        if generation != self._generation:
            return  # rebalanced again meanwhile
        for tp, first in list(self._first.items()):
            offset = committed.get((tp.topic, tp.partition), -1)
            if 0 <= offset < first and tp not in self._seeking:
                self._read_again(tp, offset, first)
        for (topic, partition), offset in committed.items():
            if offset >= 0:
                self._next.setdefault(TP(topic, partition), offset)

    def _read_again(self, tp: TP, skipped: int, arrived: int) -> None:
        log.warning(
            "%s[%d]: offsets %d..%d were skipped by the consumer; reading them again",
            tp.topic,
            tp.partition,
            skipped,
            arrived - 1,
        )
        self.gaps += 1
        self._seeking[tp] = skipped
        self._spawn(self._seek_until_read(tp, skipped))

    async def _seek_until_read(self, tp: TP, offset: int) -> None:
        """Seek again until the records arrive: faust drops records below its read offset,
        which a fetched batch still being delivered moves past them again."""
        for _ in range(SEEK_ATTEMPTS):
            if self._seeking.get(tp) != offset:
                return
            await self._seek(tp, offset)
            await asyncio.sleep(SEEK_WAIT_S)
        log.error("%s: offset %d not read again; uncommitted, a restart reads it", tp, offset)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def commit_past_duplicate_acks() -> None:
    """Make faust's commit drop duplicate acknowledgements before it looks for its run of
    consecutive offsets (see the module docstring). Idempotent."""
    find = Consumer._new_offset
    if hasattr(find, "faust_original"):
        return

    def new_offset(self: Consumer, tp: TP) -> int | None:
        acked = self._acked[tp]
        if len(acked) != len(set(acked)):
            acked[:] = sorted(set(acked))
        return find(self, tp)

    new_offset.faust_original = find  # type: ignore[attr-defined]
    Consumer._new_offset = new_offset  # type: ignore[method-assign]
