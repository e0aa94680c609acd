"""The worker process: a faust app that owns lifecycle, timers and the alert notifier task,
with the events topic consumed in batches by aiokafka inside it.

Why both: faust's per-event stream machinery costs 100-180 us of CPU per event, which caps a
worker at a few thousand events/s (see README, "Why the hot path bypasses faust streams").
The events topic is therefore read with aiokafka's `getmany`, one batch per Redis round trip,
and its offsets are committed only after the batch's effects are in Redis and Kafka. Faust runs
everything else: start-up and shutdown, signal handling, the rules reload timer, and the task
that delivers alerts from the `llm.cost.alerts` outbox to Slack at its own pace (also read with
aiokafka, so that its offsets are committed only after Redis records each post).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from detector import keys
from detector.anomaly.watch import AnomalyWatch
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.errors import BadEvent
from detector.pipeline import Deps, Turn, Turns, handle_batch, handle_idle
from detector.pricing import PriceTable
from detector.redis_client import REDIS_ERRORS, connect_redis
from detector.reports.digest import DigestSender
from detector.rules.holder import RulesHolder
from detector.runtime import raise_if_stopping, stopping, tune_gc
from detector.sinks.kafka import KafkaSink
from detector.sinks.outbox import AlertsConsumer
from detector.sinks.slack import SlackClient, slack_configured
from detector.windows.counters import WindowStore

log = logging.getLogger("detector.worker")

RETRY_MAX_S = 30.0
REDIS_REPLY_TIMEOUT_S = 20.0  # far above any batch's Lua time (tens of ms per call)
REDIS_CONNECT_TIMEOUT_S = 5.0
COLLECT_POLL_MS = 10  # poll interval while a batch runs and the next one is being collected
OUTBOX_SWEEP_S = 60.0  # how often the worker forwards tenants' leftover global contributions
IDLE_TICK_S = 1.0  # with no events, the anomaly intervals due by now are scored this often
# Dead-letter reason of an event the pipeline failed on (a bug, not bad input): it may have
# been counted in part; the dedup marks keep a replay of it from counting twice.
PROCESSING_FAILED = "processing_failed"
STOP_RECANCEL_S = 0.5  # at stop, batches not yet stopped are cancelled again this often
# The stores are unreachable: the work is held and retried, never skipped.
STORE_ERRORS = (*REDIS_ERRORS, KafkaError)
Polled = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def build_app(
    settings: Settings, rules: RulesHolder, prices: PriceTable, slack: SlackClient | None = None
) -> Any:
    """The faust app with its tasks and timers registered."""
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        datadir=str(settings.data_dir / "faust"),
        producer_acks=-1,
        # faust waits for a dead member of its group for the whole session timeout (60 s by
        # default) before it starts tasks again after a crash; 6 s is the broker's minimum.
        broker_session_timeout=6.0,
        broker_heartbeat_interval=2.0,
    )

    @app.task  # type: ignore[untyped-decorator]
    async def consume_events() -> None:
        await EventsConsumer(settings, rules, prices).run()

    @app.task  # type: ignore[untyped-decorator]
    async def notify() -> None:
        await AlertsConsumer(settings, slack, lambda rule_id: _cooldown_s(rules, rule_id)).run()

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def reload_rules() -> None:
        rules.reload_if_changed()

    digests = DigestSender(settings)  # reads the plans file now: a bad one stops the worker
    if digests.enabled:

        @app.timer(interval=settings.digest_check_s)  # type: ignore[untyped-decorator]
        async def send_digests() -> None:
            # Every worker checks; a Redis claim per period makes exactly one of them send.
            try:
                await digests.tick(now_ms())
            except Exception:  # a failed check must not stop the timer; the next one retries
                log.exception("digest check failed")

    @app.task  # type: ignore[untyped-decorator]
    async def reload_on_sighup() -> None:
        # SIGHUP re-reads rules.yaml at once, as daemons conventionally do.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, rules.reload)

    return app


class EventsConsumer:
    """Batched consumer of llm.cost.events: one pipeline call per batch, commit after effects."""

    def __init__(self, settings: Settings, rules: RulesHolder, prices: PriceTable) -> None:
        self.settings = settings
        self.rules = rules
        self.prices = prices

    async def run(self) -> None:
        settings = self.settings
        tune_gc()
        # A reply that never comes (a connection lost under a pipeline) must become an error
        # the batch is retried on, not a worker that waits forever: seen in about 1 of 8 bench
        # runs with no timeout, a batch held on a ConnectionError whose retry then hung.
        redis = connect_redis(
            settings,
            reply_timeout_s=REDIS_REPLY_TIMEOUT_S,
            connect_timeout_s=REDIS_CONNECT_TIMEOUT_S,
        )
        kafka = KafkaSink(settings)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=f"{settings.consumer_group}.events",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_max_events,
            fetch_max_bytes=16 * 1024 * 1024,
            client_id="detector-events",
            # A worker that dies is noticed after this long and its partitions move on; the
            # broker's minimum is 6 s.
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
        )
        decisions = DecisionStore(redis)
        deps = Deps(
            settings=settings,
            rules=self.rules,
            prices=self.prices,
            windows=WindowStore(redis, settings.dedup_horizon_s, settings.allowed_lateness_s),
            decisions=decisions,
            kafka=kafka,
            anomaly=AnomalyWatch(redis, decisions),
        )
        await kafka.start()
        consumer.subscribe(
            [settings.topic(keys.TOPIC_EVENTS)], listener=_MovedPartitions(deps.anomaly)
        )
        await consumer.start()
        log.info("consuming %s", settings.topic(keys.TOPIC_EVENTS))
        swept_s = ticked_s = 0.0
        # Batches in flight: while Redis works on one, Python prepares the next. A batch goes
        # out when nothing is in flight (the stores are idle: no reason to wait) or when it is
        # full; otherwise it keeps collecting, so that under load batches grow with the time a
        # batch takes and the per-batch costs are shared by many events. Offsets are committed
        # strictly in order, each after its own batch is done.
        inflight: deque[tuple[asyncio.Task[None], Polled]] = deque()
        turns = Turns()
        records: list[ConsumerRecord[Any, Any]] = []
        polled: Polled = {}
        try:
            while True:
                raise_if_stopping()
                if time.monotonic() - swept_s > OUTBOX_SWEEP_S:
                    # The global contributions a stopped worker left in outboxes of tenants
                    # that sent nothing since (the others' go with their next batch); the
                    # first sweep scans the keyspace, the next ones read the tenants' set.
                    await _sweep(deps.windows, full_scan=swept_s == 0.0)
                    swept_s = time.monotonic()
                room = settings.batch_max_events - len(records)
                if room > 0:
                    # Idle: wait for events; collecting behind a running batch: look briefly.
                    wait_ms = COLLECT_POLL_MS if inflight or records else settings.batch_max_wait_ms
                    for tp, batch in (
                        await consumer.getmany(timeout_ms=wait_ms, max_records=room)
                    ).items():
                        polled.setdefault(tp, []).extend(batch)
                        records.extend(batch)
                while inflight and inflight[0][0].done():
                    await _finish(consumer, inflight.popleft())
                if not records and not inflight and time.monotonic() - ticked_s > IDLE_TICK_S:
                    await _idle(deps)
                    ticked_s = time.monotonic()
                full = len(records) >= settings.batch_max_events
                # A second batch while one runs: Python prepares it while Redis works on the
                # first, but not before it is big enough to share the per-batch costs.
                overlap = (
                    len(inflight) < settings.batches_in_flight
                    and len(records) >= settings.batch_overlap_events
                )
                if records and (not inflight or full or overlap):
                    if len(inflight) >= settings.batches_in_flight:
                        await _finish(consumer, inflight.popleft())
                    task = asyncio.create_task(self._process(records, deps, turns.next()))
                    inflight.append((task, polled))
                    records, polled = [], {}
        finally:
            await _stop_batches([task for task, _ in inflight])
            await consumer.stop()
            await kafka.close()
            await redis.aclose()

    async def _process(
        self, records: Sequence[ConsumerRecord[Any, Any]], deps: Deps, turn: Turn | None = None
    ) -> None:
        try:
            await self._process_in_turn(records, deps, turn)
        finally:
            if turn is not None:
                turn.done.set()  # whatever happened, the batches after this one go on

    async def _process_in_turn(
        self, records: Sequence[ConsumerRecord[Any, Any]], deps: Deps, turn: Turn | None
    ) -> None:
        delay_s = 0.2
        while True:
            try:
                result = await handle_batch(
                    [(r.key, r.value) for r in records],
                    deps,
                    now_ms(),
                    [r.partition for r in records],
                    turn,
                )
            except STORE_ERRORS as exc:
                if stopping():
                    raise  # an error now is no reason to try again
                # The stores are unreachable: hold the batch and retry; nothing is committed,
                # and the dedup marks make the retry safe.
                log.warning("batch of %d held, retrying in %.1fs: %r", len(records), delay_s, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)
                continue
            except Exception:  # a bug on some event: isolate it, so the rest still count
                log.exception("batch of %d failed; retrying event by event", len(records))
                if turn is not None:
                    await turn.wait()  # the events alone reach the models after earlier batches
                await self._process_one_by_one(records, deps)
                return
            if result.dead_letters or result.alerts or result.late or result.late_for_models:
                log.info(
                    "batch: %d applied (%d late: short windows skipped; %d too late for the "
                    "anomaly models), %d duplicate, %d dead-lettered, %d alerts, %d decisions",
                    result.applied,
                    result.late,
                    result.late_for_models,
                    result.duplicates,
                    len(result.dead_letters),
                    len(result.alerts),
                    len(result.decisions),
                )
            return

    async def _process_one_by_one(
        self, records: Sequence[ConsumerRecord[Any, Any]], deps: Deps
    ) -> None:
        """After a batch hit a bug: each event alone, so that one bad event does not hold the
        rest. An event that hits the bug again goes to the dead-letter topic with the error as
        its reason; one that meets unreachable stores is held and retried like a batch (it was
        skipped before, and its offset committed with the others: spend lost)."""
        for r in records:
            delay_s = 0.2
            while True:
                try:
                    await _alone(r, deps)
                except STORE_ERRORS as exc:
                    if stopping():
                        raise
                    log.warning("event held, retrying in %.1fs: %r", delay_s, exc)
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, RETRY_MAX_S)
                    continue
                break


async def _alone(r: ConsumerRecord[Any, Any], deps: Deps) -> None:
    """One event through the pipeline; on a bug, to the dead-letter topic (store errors rise)."""
    try:
        await handle_batch([(r.key, r.value)], deps, now_ms(), [r.partition])
    except STORE_ERRORS:
        raise
    except Exception as exc:
        log.exception("event at %s[%s]@%s failed; dead-lettered", r.topic, r.partition, r.offset)
        failed = BadEvent(PROCESSING_FAILED, f"{type(exc).__name__}: {exc}"[:500])
        await deps.kafka.send_dead_letters([(r.key, r.value, failed)])


class _MovedPartitions(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the anomaly watch when partitions are taken away (every rebalance, in aiokafka's
    eager protocol), so that it stops trusting the model states it holds, and which ones it
    was given, so that its event time waits for each of them."""

    def __init__(self, watch: AnomalyWatch | None) -> None:
        self._watch = watch

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self._watch is not None and revoked:
            self._watch.partitions_moved([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self._watch is not None and assigned:
            self._watch.partitions_assigned([tp.partition for tp in assigned], now_ms())


async def _stop_batches(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel the batches in flight and wait until each has really stopped, so that none
    outlives the clients it uses. One cancel is not always enough on Python 3.11: an
    `asyncio.wait_for` inside redis-py can swallow it (CPython gh-86296), and such a batch
    went on after the worker closed its Redis client, failed on the closed connection and
    retried from a stopped worker (in a bench, it then wrote into the next run's database)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=STOP_RECANCEL_S)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.warning("batch stopped with %r", task.exception())


async def _idle(deps: Deps) -> None:
    try:
        await handle_idle(deps, now_ms())
    except STORE_ERRORS as exc:  # the next tick tries again
        log.warning("scoring due anomaly intervals failed: %r", exc)


async def _sweep(windows: WindowStore, full_scan: bool) -> None:
    try:
        forwarded = await windows.forward_pending(full_scan)
    except REDIS_ERRORS as exc:  # the next sweep, or the tenants' next batches, will do it
        log.warning("global outbox sweep failed: %r", exc)
        return
    log.debug("global outbox sweep: %d records", forwarded)


async def _finish(consumer: AIOKafkaConsumer, done: tuple[asyncio.Task[None], Polled]) -> None:
    task, polled = done
    await task
    await _commit(consumer, polled)


async def _commit(consumer: AIOKafkaConsumer, polled: Polled) -> None:
    offsets = {tp: batch[-1].offset + 1 for tp, batch in polled.items() if batch}
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        # Typically a rebalance: the partition moved and its new owner re-reads these events;
        # they are already marked as applied, so nothing is counted twice.
        log.warning("offset commit failed (%r); the events will be re-read and deduplicated", exc)


def _cooldown_s(rules: RulesHolder, rule_id: str) -> int | None:
    for rule in rules().rules:
        if rule.id == rule_id:
            return rule.cooldown_s
    return None


def run_worker(settings: Settings, rules: RulesHolder, prices: PriceTable) -> None:
    """Run until SIGINT/SIGTERM."""
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    # Slack settings are checked here, so that a bad one stops the worker before it starts.
    slack = SlackClient(settings) if slack_configured(settings) else None
    app = build_app(settings, rules, prices, slack)
    # faust narrates every service start and stop at INFO; our own loggers keep their level.
    loglevel = "DEBUG" if settings.log_level == "DEBUG" else "WARNING"
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    # faust re-configures the root logger at start; our own lines keep their level and format.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("detector")
    ours.handlers = [handler]
    ours.setLevel(settings.log_level)
    ours.propagate = False
    worker.execute_from_commandline()
