"""Records faust's consumer skipped are read again; nothing else is."""

from __future__ import annotations

import asyncio
from unittest.mock import patch

from faust.types import TP

from refinery.monitor import rereads
from refinery.monitor.rereads import Committed, SkippedRecords

P0, P1 = TP("refinery.feedback", 0), TP("refinery.feedback", 1)


class Seeks:
    def __init__(self) -> None:
        self.made: list[tuple[TP, int]] = []

    async def __call__(self, tp: TP, offset: int) -> None:
        self.made.append((tp, offset))


def test_offsets_skipped_within_a_partition_are_read_again() -> None:
    async def scenario() -> None:
        seeks = Seeks()
        skipped = SkippedRecords(seek=seeks)
        for offset in (3, 4, 9, 10):  # 5..8 never reached the agent
            skipped.saw(P0, offset)
        await asyncio.sleep(0)
        assert seeks.made == [(P0, 5)]
        skipped.saw(P0, 12)  # the rest of a batch fetched before the seek: no new gap
        for offset in range(5, 13):  # read again
            skipped.saw(P0, offset)
        skipped.saw(P1, 40)  # a partition's first record, without a known commit: no gap
        await asyncio.sleep(0)
        assert seeks.made == [(P0, 5)] and skipped.gaps == 1

    asyncio.run(scenario())


def test_a_seek_lost_to_a_batch_in_flight_is_made_again() -> None:
    async def scenario() -> None:
        seeks = Seeks()
        skipped = SkippedRecords(seek=seeks)
        with patch.object(rereads, "SEEK_WAIT_S", 0.01):
            skipped.saw(P0, 3)
            skipped.saw(P0, 6)  # 4..5 skipped
            await asyncio.sleep(0.05)  # faust dropped what the first seek fetched
            assert len(seeks.made) >= 2 and set(seeks.made) == {(P0, 4)}
            skipped.saw(P0, 4)  # here they come
            made = len(seeks.made)
            await asyncio.sleep(0.05)
            assert len(seeks.made) == made

    asyncio.run(scenario())


def test_a_partition_whose_first_records_were_skipped_is_read_from_its_commit() -> None:
    async def scenario() -> None:
        seeks = Seeks()

        async def committed() -> Committed:
            return {("refinery.feedback", 0): 7, ("refinery.feedback", 1): 40}

        skipped = SkippedRecords(seek=seeks)
        skipped.saw(P0, 10)  # 7..9 never came
        skipped.expect_committed(committed)
        await asyncio.sleep(0.01)
        assert seeks.made == [(P0, 7)]
        skipped.saw(P1, 41)  # read after the commits were known: 40 never came
        await asyncio.sleep(0.01)
        assert seeks.made == [(P0, 7), (P1, 40)]

    asyncio.run(scenario())


def test_after_a_rebalance_a_partition_starts_where_its_group_committed() -> None:
    async def scenario() -> None:
        seeks = Seeks()
        release = asyncio.Event()

        async def stale() -> Committed:
            await release.wait()
            return {("refinery.feedback", 0): 0}

        skipped = SkippedRecords(seek=seeks)
        skipped.saw(P0, 3)
        skipped.expect_committed(stale)
        skipped.forget_positions()  # rebalanced while the offsets were read
        release.set()
        await asyncio.sleep(0.01)
        skipped.saw(P0, 70)  # another worker read on meanwhile
        await asyncio.sleep(0.01)
        assert seeks.made == [] and skipped.gaps == 0

    asyncio.run(scenario())


def test_a_duplicate_acknowledgement_does_not_hold_the_commit_back() -> None:
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.transport.consumer import Consumer
    from intervaltree import IntervalTree

    def consumer(acked: list[int], committed: int) -> SimpleNamespace:
        return SimpleNamespace(
            _acked=defaultdict(list, {P0: acked}),
            _acked_index=defaultdict(set, {P0: set(acked)}),
            _gap=defaultdict(IntervalTree),
            _committed_offset=defaultdict(lambda: None, {P0: committed}),
        )

    # As seen after a restart: 58..62 acknowledged, some twice; 58 is the next to commit.
    acked = [58, 58, 59, 59, 60, 61, 62]
    rereads.commit_past_duplicate_acks()
    rereads.commit_past_duplicate_acks()  # once is enough; twice changes nothing
    assert Consumer._new_offset(consumer(list(acked), 58), P0) == 63  # type: ignore[arg-type]
    # faust's own run finder stops at the first duplicate: one offset per commit interval
    original = Consumer._new_offset.faust_original  # type: ignore[attr-defined]
    assert original(consumer(list(acked), 58), P0) == 59
