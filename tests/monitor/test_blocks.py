"""A partition's block keeper over a plain dict (the worker keeps it in the join's table)."""

from __future__ import annotations

from typing import Any

from refinery.monitor import blocks
from refinery.monitor.blocks import BlockKeeper, is_keeper_key


def row(n: int) -> dict[str, Any]:
    return {"prediction_id": f"p{n}", "model_version": "1", "at": "-", "row": {}}


def ids(block: dict[str, Any]) -> list[str]:
    return [r["prediction_id"] for r in block["predictions"]]


def test_a_bucket_is_sealed_when_a_later_one_begins_and_waits_until_delivered() -> None:
    store: dict[str, Any] = {}
    keeper = BlockKeeper(store, partition=2)
    keeper.add(row(0), at=10.2)
    keeper.add(row(1), at=10.9)
    assert keeper.unsent() == []
    keeper.add(row(2), at=13.0)  # buckets 11 and 12 had nothing here
    [block] = keeper.unsent()
    assert (block["partition"], block["round"], block["part"], block["through"]) == (2, 10, 0, 12)
    assert ids(block) == ["p0", "p1"]
    assert BlockKeeper(store, partition=2).unsent() == [block]  # in the store, not the object
    keeper.delivered(block)
    keeper.delivered(block)  # twice: no harm
    assert keeper.unsent() == [] and all(is_keeper_key(k) for k in store)


def test_a_late_prediction_joins_the_open_bucket_and_a_busy_one_goes_in_parts(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(blocks, "MAX_ROWS", 2)
    keeper = BlockKeeper({}, partition=0)
    for n, at in enumerate((5.0, 6.0, 5.5, 6.1, 6.2, 7.0)):
        keeper.add(row(n), at=at)
    sent = keeper.unsent()
    # Bucket 5: p0. Bucket 6: p1 and p2 (late), sealed as a part (6 not closed yet), then
    # p3, p4 as the second part, closed by p5's bucket 7 (an empty part closes it).
    marks = [(b["round"], b["part"], b["through"], ids(b)) for b in sent]
    assert marks == [
        (5, 0, 5, ["p0"]),
        (6, 0, 5, ["p1", "p2"]),
        (6, 1, 5, ["p3", "p4"]),
        (6, 2, 6, []),
    ]


def test_an_idle_partition_closes_what_the_clock_has_passed() -> None:
    keeper = BlockKeeper({}, partition=1)
    keeper.idle(now=101.5)  # never saw traffic: done with what ended two seconds ago
    [empty] = keeper.unsent()
    assert (empty["round"], empty["through"], empty["predictions"]) == (98, 98, [])
    keeper.delivered(empty)
    keeper.idle(now=101.7)  # nothing new to say
    keeper.idle(now=104.0)  # more, but it said how far it is done less than 5 s ago
    assert keeper.unsent() == []
    keeper.add(row(0), at=98.5)  # late for bucket 98, which is closed: it opens bucket 99
    keeper.idle(now=101.9)  # bucket 99 did not end two seconds ago yet
    assert keeper.unsent() == []
    keeper.idle(now=103.5)
    [block] = keeper.unsent()
    assert (block["round"], block["through"], ids(block)) == (99, 100, ["p0"])


def test_a_keeper_over_a_recovered_table_counts_the_open_rows_and_drops_sealed_ones() -> None:
    """Rows are written one by one and counted in memory; a new keeper (a restart, a
    rebalance) finds them, and deletes rows a crash left behind after their seal."""
    store: dict[str, Any] = {}
    keeper = BlockKeeper(store, partition=0)
    keeper.add(row(0), at=1.0)
    keeper.add(row(1), at=2.0)  # seals bucket 1
    keeper.add(row(2), at=2.5)
    keeper.add(row(3), at=2.6)
    # A crash right after the seal's commit, before its row went: row 0 is still there.
    recovered = BlockKeeper(store | {"~blocks0:row:0": row(0) | {"t": 1.0}}, partition=0)
    recovered.add(row(4), at=3.0)  # seals bucket 2: rows 1-3
    assert [ids(b) for b in recovered.unsent()] == [["p0"], ["p1", "p2", "p3"]]
    assert [k for k in recovered.store if ":row:" in k] == ["~blocks0:row:4"]  # p4, open
