"""The faust app: ``faust -A refinery.monitor.app worker`` (``refinery up`` starts it).

``join`` reads predictions and feedback (co-partitioned by prediction id, so both halves
of a pair reach the same worker), keeps the join state in a changelog-backed table (its
records sent in batches before each commit: refinery/monitor/changelog.py), and writes
labeled examples; invalid records go to ``<topic>.dlq``. Each new prediction's
features, and each rating as it is paired, go to its partition's block keeper
(refinery/monitor/blocks.py, in the same table), which sends a block of them per second
of traffic to the single-partition window topic. ``watch`` (on whichever worker owns that
partition) takes each second's blocks, once every partition has closed it, in time order,
keeps the drift windows, runs the tests on each closed window, and sends alerts and
retrain triggers. After a crash both replay what
they did since their last commit: the windows drop what they hold already, and a closed
window's messages (or a trigger whose labels came between windows) are sent from the
outbox recorded with them.
``follow_models`` resets the reference when a version is promoted or rolled back.
``sweep`` expires join state, one partition per record of the sweep topic, and on a tick
closes the blocks of a partition the join has read to its end. ``tell_ops``
posts each decision (promotions, rejections, retraining runs, restarts) to the webhook.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import faust
from faust.tables.base import Collection
from faust.types import TP
from pydantic import ValidationError

from refinery.common.decisions import webhook_payload
from refinery.common.events import (
    DecisionEvent,
    Event,
    FeedbackEvent,
    ModelEvent,
    PredictionEvent,
    columns_of,
)
from refinery.common.kafka.admin import committed_offsets, consumer_lag
from refinery.common.kafka.consumer import dead_letter_headers, parse_event
from refinery.common.metrics import serve_metrics
from refinery.common.settings import get_settings
from refinery.common.task import load_task
from refinery.common.topics import DLQ_SUFFIX, Stream, Topics
from refinery.monitor.alerts import Window, post_webhook, slack_payload
from refinery.monitor.blocks import BlockKeeper, OpenRow, is_keeper_key
from refinery.monitor.changelog import CHANGELOG_LINGER_S, MAX_PENDING, BatchedChanges
from refinery.monitor.drift import alarm_ratio, describe, detect_drift, warm_up
from refinery.monitor.faust_app import MonitorApp
from refinery.monitor.join import (
    JoinState,
    expired,
    on_feedback,
    on_prediction,
    stale_keys,
    sweep_interval,
)
from refinery.monitor.metrics import MonitorMetrics
from refinery.monitor.notices import NoticePolicy
from refinery.monitor.recorder import PublisherConfig, Reported, ReportProcess
from refinery.monitor.rereads import SkippedRecords, commit_past_duplicate_acks
from refinery.monitor.windows import (
    Change,
    DriftWindows,
    Outbox,
    prediction_record,
    rating_record,
    rejection_record,
    reset_record,
)

log = logging.getLogger(__name__)

settings = get_settings()
topics = Topics.from_settings(settings)
task_file = load_task(settings.task_file)
spec = task_file.drift
if task_file.task.kind != "classification":
    import torch

    # Free text embeds every window (drift.py). One thread: on a host shared with vLLM, two
    # torch threads that keep losing their core wait on each other (as in the retrainer).
    torch.set_num_threads(1)

app = MonitorApp(
    settings.monitor_app_id,
    broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.replication,
    store="memory://",  # state lives in the changelog topic and is replayed on start
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    # A restarted worker rejoins its group only once the coordinator drops the killed one:
    # faust's 60 s default kept a SIGKILLed monitor from its partitions 73 s in
    # bench/faults.py. Heartbeats run on the event loop, which drift tests leave free (they
    # run in threads), so 20 s still spares a busy worker.
    broker_session_timeout=20.0,
    broker_heartbeat_interval=3.0,
    # Each example is a record of its own: sent as they come (faust's 0), they and the
    # table's writes cost the broker 0.16 ms of CPU per event, 0.10 at 5 ms, and the worker
    # more too (bench.monitor's traffic, 2-core host). Longer waits held the join up at its
    # blocks' flushes.
    producer_linger=0.005,
    # The join's changelog goes in batches (refinery/monitor/changelog.py): a flush of a
    # commit interval's states takes a few of these per partition, not hundreds of 16 KB.
    producer_max_batch_size=512 * 1024,
)
# faust's consumer can skip records and stall its commits (refinery/monitor/rereads.py):
# the join and the windows tell it what they read, and it seeks back over a gap.
commit_past_duplicate_acks()
skipped = SkippedRecords(seek=lambda tp, offset: app.consumer.seek_wait({tp: offset}))


@app.on_partitions_revoked.connect
async def forget_positions(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    skipped.forget_positions()
    keepers.clear()  # a partition may come back with its table recovered anew


@app.on_partitions_assigned.connect
async def expect_committed(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    skipped.expect_committed(
        lambda: asyncio.to_thread(
            committed_offsets, settings.kafka_bootstrap, settings.monitor_app_id
        )
    )


traffic = app.topic(
    topics.name(Stream.PREDICTIONS),
    topics.name(Stream.FEEDBACK),
    key_serializer="raw",
    value_serializer="raw",
)
examples = app.topic(topics.name(Stream.EXAMPLES), key_serializer="raw", value_serializer="raw")
join_table = app.Table("join", default=None, partitions=settings.topic_partitions)
assert isinstance(join_table, Collection)
# Read and written only through this: its changelog records go in batches, before each
# commit (refinery/monitor/changelog.py).
join_state = BatchedChanges(join_table)


async def flush_join_state() -> None:
    await join_state.flush(app.kafka_producer())


app.before_flush(flush_join_state)
# Topics with equal partition counts are co-partitioned, so partition P of this topic lives
# on the worker owning P of the traffic and of the table: a sweep record of partition P is
# where the keys of P can be expired (their tombstones go to changelog partition P).
sweep_topic = app.topic(
    f"{settings.monitor_app_id}-join-sweep",
    partitions=settings.topic_partitions,
    replicas=settings.replication,
    internal=True,
    key_serializer="raw",
    value_serializer="raw",
)
SWEEP_S = sweep_interval(settings.join_ttl_s)
_last_sweep: dict[int, float] = {}
SWEEP, BLOCK_TICK = b"sweep", b"tick"
BLOCK_TICK_S = 0.5  # how often an idle partition's keeper looks at the clock
_sending: dict[int, asyncio.Lock] = {}  # per partition: its blocks go out in order
keepers: dict[int, BlockKeeper] = {}  # per partition this worker holds


def keeper(partition: int) -> BlockKeeper:
    if partition not in keepers:
        keepers[partition] = BlockKeeper(
            join_state.of_partition(partition), partition, lambda: rows_in_join_states(partition)
        )
    return keepers[partition]


def prediction_row(prediction: PredictionEvent) -> dict[str, Any]:
    return prediction_record(prediction, task_file.task)


def rows_in_join_states(partition: int) -> Iterator[OpenRow]:
    """The drift rows the join states of ``partition`` carry (a keeper made over a
    recovered table finds its open block in them)."""
    for key, raw in join_state.items():
        if raw and raw.get("rows") and raw.get("partition") == partition and not is_keeper_key(key):
            yield from JoinState.from_json(raw).open_rows(prediction_row)


def carries_open_rows(raw: dict[str, Any] | None, blocks: BlockKeeper) -> bool:
    return any(blocks.is_open(row[0]) for row in (raw or {}).get("rows", ()))


# One partition: the windows need the whole stream, in one order, on one worker.
window_topic = app.topic(
    f"{settings.monitor_app_id}-window",
    partitions=1,
    replicas=settings.replication,
    internal=True,
    key_serializer="raw",
    value_serializer="json",
)
window_table = app.Table("window", default=None, partitions=1)
models = app.topic(topics.name(Stream.MODELS), key_serializer="raw", value_serializer="raw")
alerts = app.topic(topics.name(Stream.ALERTS), key_serializer="raw", value_serializer="raw")
triggers = app.topic(topics.name(Stream.TRIGGERS), key_serializer="raw", value_serializer="raw")
decisions = app.topic(topics.name(Stream.DECISIONS), key_serializer="raw", value_serializer="raw")
WINDOW_KEY = b"windows"
E = TypeVar("E", bound=Event)
metrics = MonitorMetrics()
metrics.watch_join_state(lambda: len(join_state))
LAG_S = 30.0  # how often the worker measures its group's consumer lag
# Time-closed windows need a clock in the stream: every worker ticks; extra ticks are harmless.
TICK_S = min(5.0, spec.window_minutes * 60 / 4)
#: The windows' Evidently records and report copies, in a process beside the worker.
reports = ReportProcess(
    PublisherConfig(
        settings.var_dir / "monitor" / "reports",
        settings.evidently_workspace,
        free_text=task_file.task.kind != "classification",
        ui_url=settings.evidently_ui_url,
        kept=settings.drift_snapshots_kept,
    )
)
#: Drifted windows' report copies, rendered one at a time after their alerts and triggers
#: went out (seconds each on a busy host: the next window's close must not wait for one).
#: Bounded: a worker that cannot keep up waits at the put, as it did inline.
report_copies: asyncio.Queue[tuple[Reported, Window]] = asyncio.Queue(maxsize=8)


async def dead_letter(message: Any, exc: Exception) -> None:
    headers = dead_letter_headers(message.topic, message.partition, message.offset, exc)
    dlq = app.topic(message.topic + DLQ_SUFFIX, key_serializer="raw", value_serializer="raw")
    await dlq.send(key=message.key, value=message.value or b"", headers=headers)
    log.warning(
        "dead-lettered %s[%d]@%d: %s",
        message.topic,
        message.partition,
        message.offset,
        str(exc).splitlines()[0],
    )


@app.agent(traffic)
async def join(stream: faust.StreamT) -> None:
    async for event in stream.events():
        message = event.message
        skipped.saw(message.tp, message.offset)
        stream_kind = topics.stream_of(message.topic)
        try:
            parsed = parse_event(stream_kind, message.value)
            key = message.key.decode() if message.key else ""
            expected = getattr(parsed, "prediction_id", None)
            if key != expected:
                raise ValueError(f"key {key!r} is not its prediction_id {expected!r}")
        except (ValidationError, ValueError) as exc:
            await dead_letter(message, exc)
            metrics.events.labels(stream=stream_kind.value, outcome="dead_letter").inc()
            continue
        if isinstance(parsed, PredictionEvent) and parsed.shadow_of is not None:
            metrics.events.labels(stream=stream_kind.value, outcome="shadow").inc()
            continue  # a shadow canary's answer: nobody saw it, so nobody rates it
        metrics.events.labels(stream=stream_kind.value, outcome="read").inc()
        raw = join_state.get(key)
        now = time.time()
        blocks = keeper(message.partition)
        state = JoinState.from_json(raw)
        if expired(raw, now, settings.join_ttl_s):
            # Past its TTL but not swept yet: gone all the same, whenever the sweep comes;
            # the rows it carries for the open block (a TTL of seconds) stay with it.
            rows = state.open_rows(prediction_row)
            state = JoinState(rows=[list(row) for row in rows if blocks.is_open(row[0])])
        at = parsed.occurred_at.timestamp()
        if isinstance(parsed, PredictionEvent):
            if state.prediction is None:  # new: a redelivered one has its row already
                state.rows.append([blocks.add(prediction_row(parsed), at), at, None])
                metrics.window_rows.inc()
            out = on_prediction(state, parsed, now)
        else:
            assert isinstance(parsed, FeedbackEvent)
            out = on_feedback(state, parsed, now)
        for example in out:  # in the partition's order, after the rows before them
            record = rating_record(example)
            state.rows.append([blocks.add(record, at), at, record])
        # The rows go with the state (one changelog record) until their block is sealed.
        state.rows = [row for row in state.rows if blocks.is_open(row[0])]
        state.partition = message.partition  # the sweep of this partition expires it
        join_state.set(message.partition, key, state.to_json())
        for example in out:
            await examples.send(key=example.feedback_id.encode(), value=example.to_bytes())
            metrics.examples.inc()
        await send_blocks(message.partition)
        if join_state.pending >= MAX_PENDING:
            await flush_join_state()


def _valid(event_type: type[E], value: bytes, topic: str) -> E | None:
    """The event in ``value``, or None (logged) when it is not one: skipped, not fatal."""
    try:
        return event_type.model_validate_json(value)
    except ValidationError as exc:
        log.warning("%s: skipping an invalid event: %s", topic, str(exc).splitlines()[0])
        return None


@app.agent(models)
async def follow_models(stream: faust.StreamT) -> None:
    """A promotion or rollback gives the windows a new reference, a rejection may let the
    drift ask again (bad events are skipped)."""
    async for value in stream:
        if (event := _valid(ModelEvent, value, "models")) is None:
            continue
        if event.switches_champion:
            log.info("models: v%s %s; new drift reference", event.version, event.action)
            await window_topic.send(key=WINDOW_KEY, value=reset_record(event.version, event.action))
        elif event.action in ("rejected", "canary_stopped"):  # the gate or a canary judged
            log.info(
                "models: v%s %s; a drift that goes on may ask again", event.version, event.action
            )
            await window_topic.send(key=WINDOW_KEY, value=rejection_record(event.version))


@app.agent(decisions)
async def tell_ops(stream: faust.StreamT) -> None:
    """Each decision (refinery/common/decisions.py) to the webhook (bad events are skipped)."""
    async for value in stream:
        if (event := _valid(DecisionEvent, value, "decisions")) is None:
            continue
        log.info("decisions: %s %s v%s", event.action, event.subject, event.version or "-")
        payload = webhook_payload(event)
        await asyncio.to_thread(post_webhook, settings.alert_webhook_url, payload)


async def send_blocks(partition: int) -> None:
    """The partition's sealed blocks to the windows, in order, once the changelog has the
    seals (a block the windows have is never sealed again after a crash)."""
    async with _sending.setdefault(partition, asyncio.Lock()):
        blocks = keeper(partition).unsent()
        if not blocks:
            return
        await app.producer.flush()
        for block in blocks:
            await (await window_topic.send(key=WINDOW_KEY, value=block))
            keeper(partition).delivered(block)


def read_to_end(partition: int) -> bool:
    """Has the join read every prediction of ``partition`` the broker holds?"""
    tp = TP(topics.name(Stream.PREDICTIONS), partition)
    end = app.consumer.highwater(tp)  # None until the consumer has fetched the partition
    if end is None:
        return False
    read = skipped.next_offset(tp)
    if read is None:  # nothing read since the assignment: where the group left off
        # faust's own record of the committed offsets (no public accessor).
        committed: dict[TP, int | None] = getattr(app.consumer, "_committed_offset", {})
        read = committed.get(tp) or 0
    return read >= end


@app.agent(window_topic)
async def watch(stream: faust.StreamT) -> None:
    windows = DriftWindows(
        window_table,
        spec,
        task_file.feedback.max_key_share,
        settings.topic_partitions,
        NoticePolicy(settings.alert_repeat_minutes, settings.alert_resolve_windows),
    )
    async for event in stream.events():
        skipped.saw(event.message.tp, event.message.offset)
        now = time.time()
        change = windows.apply(event.value, now, position=event.message.offset)
        while True:
            if change is Change.RESET:
                log.info("windows: reference reset to v%s", event.value["model_version"])
            elif change is Change.REFERENCE_FULL:
                log.info("windows: reference of v%s complete", windows.state.version)
            # A trigger its labels completed, or a close's messages a crash left unsent:
            # sent before the next close writes its own.
            if (pending := windows.outbox) is not None:
                await deliver(windows, pending)
            if not windows.due(now):
                break
            await close_window(windows)
            now = time.time()
            change = windows.absorb(now)  # the rest of the blocks the close waited for


@app.task
async def warm_up_drift() -> None:
    """The drift tests' imports, model and first report, before the first window needs them."""
    started = time.monotonic()
    log.info("report process started, pid %d", await reports.start())
    result = await asyncio.to_thread(warm_up, task_file.task.kind != "classification")
    await reports.warm_up(result, settings.var_dir / "monitor" / "warm-up.html")
    log.info("drift tests warmed up in %.1f s", time.monotonic() - started)


@app.task
async def write_report_copies() -> None:
    """The copies on disk of drifted windows' reports (AlertPublisher.save_copy): best
    effort, the snapshot in the Evidently workspace is the record."""
    while True:
        reported, window = await report_copies.get()
        started = time.monotonic()
        try:
            path = await reports.save_copy(reported, window)
        except Exception:
            log.exception("report copy of window %d not written", window.index)
            continue
        log.info(
            "report copy of window %d in %.1f s: %s", window.index, time.monotonic() - started, path
        )


@app.task
async def expose_metrics() -> None:
    serve_metrics(metrics.registry, settings.metrics_host, settings.monitor_metrics_port, "monitor")


@app.timer(interval=CHANGELOG_LINGER_S)
async def send_join_state() -> None:
    """The join's changes out at least this often, commit or not: standbys and a restarted
    worker's recovery see them as soon as faust's per-record sends showed them."""
    await flush_join_state()


@app.timer(interval=LAG_S)
async def measure_lag() -> None:
    """The worker's consumer group lag, per topic, for the metrics."""
    try:
        lag = await asyncio.to_thread(
            consumer_lag, settings.kafka_bootstrap, [settings.monitor_app_id]
        )
    except Exception as exc:  # a broker away: the next measurement tries again
        log.warning("metrics: consumer lag not measured: %s", exc)
        return
    metrics.set_lag(lag.get(settings.monitor_app_id, {}))


@app.timer(interval=TICK_S)
async def tick() -> None:
    await window_topic.send(key=WINDOW_KEY, value={"kind": "tick"})


async def close_window(windows: DriftWindows) -> None:
    """Test the window; record it; close it with its alert and trigger decision; send them."""
    closed = windows.closing()
    started = time.monotonic()
    result = await asyncio.to_thread(
        detect_drift,
        closed.reference,
        closed.current,
        spec.p_value,
        closed.reference_thumbs,
        closed.current_thumbs,
        spec.thumbs_down_p_value,
        task_file.task.kind != "classification",  # free text: embeddings, answer kinds
    )
    tested = time.monotonic()
    episodic = columns_of("quality", result.drifted_columns)
    # Whether ops hear of it (once per drift episode of each kind): only then its widgets
    # and copy.
    decisions = windows.notice(closed, result.drifted_columns, result.metrics)
    window = Window(
        closed.index,
        closed.start,
        closed.end,
        len(closed.current),
        closed.version,
        episode=(windows.state.trigger.drift_began or closed.start) if episodic else None,
        thumbs=closed.current_thumbs,
        decisions=decisions,
    )
    reported = await reports.record(result, window)
    lowest = min(result.metrics, key=alarm_ratio)
    log.info(
        "drift window %d v%s: %d predictions, %d/%d thumbs down, drifted=%s, closest %s %s "
        "(tests %.3f s, record %.3f s), notice %s, rows %s",
        closed.index,
        closed.version,
        len(closed.current),
        closed.current_thumbs.down,
        closed.current_thumbs.total,
        ",".join(result.drifted_columns) or "-",
        lowest.column,
        describe(lowest),
        tested - started,
        time.monotonic() - tested,
        ",".join(f"{kind}:{d.notice}" for kind, d in decisions.items() if d.notice) or "-",
        closed.digest,
    )
    metrics.window_closed(
        result.metrics, len(closed.current), closed.end.timestamp(), time.monotonic() - started
    )
    outbox = windows.close(closed, result.drifted_columns, reported.alerts, decisions)
    await deliver(windows, outbox)
    if reported.alerts and window.detailed(True):
        await report_copies.put((reported, window))


async def deliver(windows: DriftWindows, outbox: Outbox) -> None:
    """Send a closed window's alerts and trigger, then clear its outbox: each send waits
    for the broker, so a crash before the clear resends (same event ids) and none is lost.
    The webhook hears of an alert with a notice (once per drift episode, not per window)."""
    for alert in outbox.alerts:
        await (await alerts.send(key=alert.reference_version.encode(), value=alert.to_bytes()))
        if alert.notice is not None:
            payload = slack_payload(alert)
            await asyncio.to_thread(post_webhook, settings.alert_webhook_url, payload)
    if outbox.trigger is not None:
        log.info("trigger %s: %s", outbox.trigger.trigger_id, outbox.trigger.reason)
        await (
            await triggers.send(
                key=outbox.trigger.trigger_id.encode(), value=outbox.trigger.to_bytes()
            )
        )
    metrics.sent(outbox.alerts, outbox.trigger)
    windows.delivered(outbox)


@app.timer(interval=SWEEP_S, on_leader=True)
async def request_sweeps() -> None:
    """One sweep record per partition, so partitions without traffic expire state too."""
    for partition in range(settings.topic_partitions):
        await sweep_topic.send(value=SWEEP, partition=partition)


@app.timer(interval=BLOCK_TICK_S, on_leader=True)
async def tick_blocks() -> None:
    """A tick per partition: where the join is idle, its keeper closes the past buckets."""
    for partition in range(settings.topic_partitions):
        await sweep_topic.send(value=BLOCK_TICK, partition=partition)


@app.agent(sweep_topic)
async def sweep(stream: faust.StreamT) -> None:
    """Drop the pairs of this record's partition that waited past ``join_ttl_s``; on a
    tick, close the buckets of a partition the join has read to its end."""
    async for event in stream.events():
        partition = event.message.partition
        now = time.time()
        if event.value == BLOCK_TICK:
            if read_to_end(partition):
                keeper(partition).idle(now)
            await send_blocks(partition)
            continue
        # A backlog (records sent while no worker ran) needs one sweep, not one each.
        if now - _last_sweep.get(partition, 0.0) < SWEEP_S / 2:
            continue
        _last_sweep[partition] = now
        stale = [
            key
            for key in stale_keys(
                join_state.items(), partition, now, settings.join_ttl_s, recovered_partition
            )
            if not carries_open_rows(join_state[key], keeper(partition))  # gone once sealed
        ]
        for key in stale:
            join_state.pop(partition, key)  # the tombstone goes to changelog partition P
        if stale:
            await flush_join_state()  # tombstones out now, not at the next commit
            log.info("join: expired %d entries of partition %d", len(stale), partition)


def recovered_partition(key: str) -> int | None:
    """The changelog partition the memory store read ``key`` from on recovery (states
    written before ``JoinState.partition`` existed reach a worker only that way)."""
    key_partition: dict[str, int] = getattr(join_table.data, "_key_partition", {})
    return key_partition.get(key)
