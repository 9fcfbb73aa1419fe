"""The drift windows' rows, gathered where the traffic is read: one keeper per partition.

The join (an agent per partition of the traffic, on whichever worker owns it) hands each
new prediction to the keeper of its partition, which gathers the rows into blocks by the
prediction's own time (``occurred_at``, in buckets of ``BUCKET_S``) and sends each block to
the windows (refinery/monitor/windows.py) as one record. The windows take a bucket once
every partition has closed it, its rows in time order (ties in partition order), so which
predictions make a window depends on each partition's own order only: the same
whether one worker or several run the join, and the per-prediction work (features, the
rows' writes) is spread over the workers with the partitions.

A bucket closes at a partition when a prediction of a later bucket arrives there, or, when
the join has read all of the partition (``idle``), once the clock is ``IDLE_SLACK_S`` past
it: an idle partition must not hold the windows up. One with nothing open says how far it
is done every ``IDLE_REPEAT_S`` (an empty block), so a quiet partition costs the windows a
record every few seconds, and a window that waits on it at most that long. A prediction of
a bucket already closed (a gateway whose clock is behind) joins the open one. A busy bucket
goes in parts of at most ``MAX_ROWS`` rows.

The keeper's state lives in the join's table under keys of its own, so it shares the join's
changelog partition. The open block's rows are kept in memory only: each is carried by the
join state it came from (``JoinState.rows``, written by the join anyway), so a prediction
costs the changelog one record, not three (its state, a row, the row's deletion after the
seal). A keeper made after a crash or a rebalance finds its open rows again in the join
states of its partition (``recover``): a state and the rows it carries are one write, so a
state recovered comes with its rows, and a prediction whose state was lost is new to the join
again and gets a new row. A sealed block waits in an outbox key until the broker has it (the
worker flushes the changelog first, so a block the windows have is never sealed again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any

BUCKET_S = 1.0
IDLE_SLACK_S = 2.0  # how far behind the clock an idle partition closes its buckets
IDLE_REPEAT_S = 5.0  # how often a partition with nothing open says how far it is done
MAX_ROWS = 200  # per block: a record stays well under Kafka's 1 MB
PREFIX = "~blocks"  # join table keys of the keepers (prediction ids never start with "~")

#: A row of the open block as the join state carrying it keeps it: its number, the event's
#: time, and the record.
OpenRow = tuple[int, float, dict[str, Any]]


def is_keeper_key(key: str) -> bool:
    return key.startswith(PREFIX)


@dataclass
class KeeperState:
    """What a seal commits (the open block's rows are the join states')."""

    bucket: int | None = None  # the open bucket (None: the next row opens one)
    part: int = 0  # parts of the open bucket already sealed
    first: int = 0  # the number of the open block's first row (rows are numbered on)
    through: int | None = None  # the last bucket closed here
    sealed: int = 0  # blocks sealed so far: names the outbox keys
    said_at: float = 0.0  # when it last said, with nothing open, how far it is done
    unsent: list[int] = field(default_factory=list)  # outbox, in order


def _nothing() -> Iterable[OpenRow]:
    return ()


class BlockKeeper:
    """The open block of one partition, and its sealed blocks until the broker has them.

    ``add`` numbers each row; the join keeps the number (and the record, or what makes it)
    in the join state it writes next, until ``is_open`` says the row's block is sealed.
    ``recover`` gives the rows the partition's join states carry, for a keeper made over a
    recovered table. Keep one per partition while the worker holds it (a new one after a
    rebalance).
    """

    def __init__(
        self,
        store: MutableMapping[str, Any],
        partition: int,
        recover: Callable[[], Iterable[OpenRow]] = _nothing,
    ) -> None:
        self.store = store
        self.partition = partition
        self.prefix = f"{PREFIX}{partition}:"
        self._recover = recover
        self._state: KeeperState | None = None
        self._rows: list[dict[str, Any]] = []  # the open block's, in order
        self._next = 0  # the next row's number
        self._written: list[str] = []  # rows an older version wrote under keys of their own

    @property
    def state(self) -> KeeperState:
        if self._state is None:
            raw = self.store.get(self.prefix + "meta")
            state = KeeperState(**{**raw, "unsent": list(raw["unsent"])}) if raw else KeeperState()
            recovered = self._recover()
            found = {n: {**record, "t": at} for n, at, record in recovered if n >= state.first}
            self._read_written_rows(state, found)
            self._rows = [found[n] for n in sorted(found)]
            self._next = max(found, default=state.first - 1) + 1
            if state.bucket is None and self._rows:  # opened after the last seal: as add did
                state.bucket = self._opened(state, self._rows[0]["t"])
            self._state = state
        return self._state

    def _read_written_rows(self, state: KeeperState, found: dict[int, dict[str, Any]]) -> None:
        """Rows a keeper before this one wrote one by one (``row:<n>`` keys): the open ones
        join ``found`` and go at the next seal, sealed ones a crash left behind go now."""
        n = state.first
        while (written := self.store.get(f"{self.prefix}row:{n}")) is not None:
            found[n] = written
            self._written.append(f"{self.prefix}row:{n}")
            n += 1
        gone = state.first - 1
        while self.store.pop(f"{self.prefix}row:{gone}", None) is not None:
            gone -= 1

    def _opened(self, state: KeeperState, at: float) -> int:
        bucket = int(at // BUCKET_S)
        return bucket if state.through is None else max(bucket, state.through + 1)

    def add(self, record: dict[str, Any], at: float) -> int:
        """A prediction new to the join, or a rating it paired (``at``: the event's own
        time, epoch seconds). Returns the row's number, for the join state to carry."""
        state = self.state
        bucket = int(at // BUCKET_S)
        if state.bucket is None:
            state.bucket = self._opened(state, at)
        elif bucket > state.bucket:
            self._seal(state, through=bucket - 1, bucket=bucket, part=0)
        number = self._next
        self._rows.append({**record, "t": at})
        self._next += 1
        if len(self._rows) >= MAX_ROWS:
            self._seal(state, through=state.bucket - 1, bucket=state.bucket, part=state.part + 1)
        return number

    def is_open(self, number: int) -> bool:
        """Is row ``number`` in the open block (not sealed yet)?"""
        return number >= self.state.first

    def idle(self, now: float) -> None:
        """The join has read all of the partition: close the buckets the clock has passed."""
        state = self.state
        mark = int((now - IDLE_SLACK_S) // BUCKET_S) - 1  # the last bucket that far behind
        if state.bucket is None:  # nothing open: say the partition is done up to ``mark``
            if (state.through is None or state.through < mark) and (
                now - state.said_at >= IDLE_REPEAT_S
            ):
                state.bucket, state.said_at = mark, now
                self._seal(state, through=mark, bucket=None, part=0)
        elif state.bucket <= mark:
            self._seal(state, through=mark, bucket=None, part=0)

    def unsent(self) -> list[dict[str, Any]]:
        """Sealed blocks the broker may not have, oldest first."""
        return [self.store[f"{self.prefix}out:{i}"] for i in self.state.unsent]

    def delivered(self, block: dict[str, Any]) -> None:
        state = self.state
        if block["sealed"] in state.unsent:
            state.unsent.remove(block["sealed"])
            self.store.pop(f"{self.prefix}out:{block['sealed']}", None)
            self._commit(state)

    def _seal(self, state: KeeperState, through: int, bucket: int | None, part: int) -> None:
        """Seal the open block, then open ``bucket`` (None: the next row opens one): the
        block and the state in one commit each, the rows' join states untouched (their
        numbers are below ``first`` from now on)."""
        assert state.bucket is not None
        self.store[f"{self.prefix}out:{state.sealed}"] = {
            "kind": "block",
            "partition": self.partition,
            "round": state.bucket,
            "part": state.part,
            "through": through,
            "sealed": state.sealed,
            "predictions": self._rows,
        }
        state.unsent.append(state.sealed)
        state.sealed += 1
        state.first = self._next
        state.through, state.bucket, state.part = through, bucket, part
        self._commit(state)
        for key in self._written:
            del self.store[key]
        self._rows, self._written = [], []

    def _commit(self, state: KeeperState) -> None:
        self.store[self.prefix + "meta"] = asdict(state)
