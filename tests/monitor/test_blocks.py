"""A partition's block keeper over a plain dict (the worker keeps it in the join's table),
and the join states that carry its open rows."""

from __future__ import annotations

import json
from typing import Any

from refinery.monitor import blocks
from refinery.monitor.blocks import BlockKeeper, is_keeper_key
from refinery.monitor.join import JoinState
from tests.monitor.test_join import prediction


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


def test_a_keeper_over_a_recovered_table_finds_its_open_rows_in_the_join_states() -> None:
    """The open block's rows are in memory and in the join states that carry them: a new
    keeper (a restart, a rebalance) takes those not sealed yet, in their order."""
    store: dict[str, Any] = {}
    keeper = BlockKeeper(store, partition=0)
    times = (1.0, 2.0, 2.5, 2.6)
    numbers = [keeper.add(row(n), at=at) for n, at in enumerate(times)]
    assert [keeper.is_open(n) for n in numbers] == [False, True, True, True]  # bucket 1 sealed
    assert not any(":row:" in key for key in store)  # no write per row
    # As the join states carry them: p0's state still names its sealed row.
    carried = [(n, times[i], row(i)) for i, n in enumerate(numbers)]
    recovered = BlockKeeper(dict(store), partition=0, recover=lambda: reversed(carried))
    assert recovered.add(row(4), at=3.0) == numbers[-1] + 1  # seals bucket 2: rows 1-3
    assert [ids(b) for b in recovered.unsent()] == [["p0"], ["p1", "p2", "p3"]]
    assert [r["t"] for r in recovered.unsent()[1]["predictions"]] == [2.0, 2.5, 2.6]


def test_rows_an_older_keeper_wrote_one_by_one_are_sealed_and_then_deleted() -> None:
    """Before the rows rode with the join states, each was a key of its own: a keeper after
    the upgrade seals the open ones, and deletes those a crash left after their seal."""
    store: dict[str, Any] = {}
    keeper = BlockKeeper(store, partition=0)
    keeper.add(row(0), at=1.0)
    keeper.add(row(1), at=2.0)  # seals bucket 1: row 0; row 1 is open
    store["~blocks0:row:0"] = row(0) | {"t": 1.0}  # the older keeper had not deleted it yet
    store["~blocks0:row:1"] = row(1) | {"t": 2.0}
    recovered = BlockKeeper(store, partition=0)
    recovered.add(row(2), at=3.0)  # seals bucket 2
    assert [ids(b) for b in recovered.unsent()] == [["p0"], ["p1"]]
    assert not any(":row:" in key for key in store)


def test_a_join_state_carries_its_rows_through_the_table() -> None:
    """What the join writes with a state and a keeper recovers from it: the rating's record
    as it was, the prediction's own made again from the prediction."""
    state = JoinState(prediction=prediction("p7"), partition=3)
    rating = {"kind": "rating", "event_id": "e1"}
    state.rows = [[4, 10.5, None], [9, 11.0, rating]]
    raw = json.loads(json.dumps(state.to_json()))  # as the changelog holds it
    made = JoinState.from_json(raw).open_rows(lambda p: {"prediction_id": p.prediction_id})
    assert made == [(4, 10.5, {"prediction_id": "p7"}), (9, 11.0, rating)]
    assert "rows" not in JoinState(prediction=prediction("p8")).to_json()  # none: no field
