"""Where the worker's hot path belongs, measured on the real stack (Kafka and Redis on loopback).

    .venv/bin/python benches/bench_ingest.py [--events 50000]

Cases, one line each (ratio = base_s / cand_s; *_eps = events per second):
- ingest_faust_vs_batched: the same pre-produced topic consumed end to end (decode, price,
  windows, rules, decisions, Kafka outputs) by a faust agent over `stream.take(1000, within=0.2)`
  (base) and by detector.worker.EventsConsumer, aiokafka `getmany` + commit (cand). Each run
  starts from the earliest offset with its own consumer group and an empty Redis database, and
  is timed from start until the global 1d window counts every event; *_first_s is the part of
  that spent before the first event was counted (start-up, group join).
- ingest_batched_1000_vs_2000: EventsConsumer with faust's batch size (base) against its
  default (cand, the run of the line above), to tell batch size apart from faust's machinery.
- redis_per_event_vs_batch: WindowStore.apply_batch one event at a time (base) against the same
  events in batches of 2000 (cand); decoding and pricing happen before the clock starts.
- pipeline_mixed_vs_partition_batches: handle_batch over batches of 1000 in produce order, which
  mix every partition as faust's take() does (base), against batches of 1000 drawn from one
  partition each, as getmany mostly returns them (cand). Events are keyed by tenant, so a
  partition-local batch touches fewer tenants, users and sessions.
- consume_only_faust_vs_aiokafka: the framework alone, no pipeline: faust `take(1000)` (base)
  against aiokafka `getmany` + commit (cand), both decoding each value with orjson.

Needs `scripts/services up`. Uses Redis database 12 (flushed) and topics named bench-<uuid>.*,
deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import orjson
import workloads
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from common import delete_run_topics, run_settings, services_reachable
from redis.asyncio import Redis

from detector import keys
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.ingest.decode import decode_event
from detector.pipeline import Deps, handle_batch
from detector.pricing import PriceTable, price_event
from detector.rules.holder import RulesHolder
from detector.schemas import Scope
from detector.sinks.kafka import KafkaSink
from detector.startup import ensure_topics
from detector.windows.buckets import MAX_RETENTION_S
from detector.windows.counters import PricedEvent, WindowStore
from detector.worker import EventsConsumer, now_ms

log = logging.getLogger("bench_ingest")

POLL_S = 0.02  # completion is detected within this much of the last event being counted
TAKE_MAX = 1000
TAKE_WITHIN_S = 0.2
BATCH_EVENTS = 2000


@dataclass(frozen=True)
class Run:
    total_s: float  # from start until every event was counted (or the timeout)
    first_s: float  # from start until the first event was counted: start-up and group join
    counted: int

    def eps(self) -> float:
        return self.counted / self.total_s if self.total_s > 0 else 0.0


def fmt_case(name: str, n: int, base: Run, cand: Run, **extra: str) -> str:
    ratio = base.total_s / cand.total_s if cand.total_s > 0 else float("inf")
    fields = {
        "case": name,
        "n": str(n),
        "base_s": f"{base.total_s:.3f}",
        "cand_s": f"{cand.total_s:.3f}",
        "ratio": f"{ratio:.2f}x",
        "base_eps": f"{base.eps():.0f}",
        "cand_eps": f"{cand.eps():.0f}",
        **extra,
    }
    return " ".join(f"{k}={v}" for k, v in fields.items())


async def counted_events(windows: WindowStore) -> int:
    """Events counted so far, as the global scope's 1d window sees them."""
    [sums] = await windows.read_windows(
        [(keys.GLOBAL_TENANT, Scope.global_, "all", "1d")], now_ms()
    )
    return int(sums["requests"])


async def timed_consume(
    start: Callable[[], Awaitable[None]],
    counted_so_far: Callable[[], Awaitable[int]],
    n: int,
    timeout_s: float,
) -> Run:
    """Call start(), then poll until n events are counted or timeout_s has passed."""
    t0 = time.perf_counter()
    await start()
    first_s: float | None = None
    while True:
        counted = await counted_so_far()
        elapsed_s = time.perf_counter() - t0
        if counted and first_s is None:
            first_s = elapsed_s
        if counted >= n or elapsed_s > timeout_s:
            break
        await asyncio.sleep(POLL_S)
    if counted < n:
        log.warning("only %d of %d events counted after %.0fs", counted, n, elapsed_s)
    return Run(elapsed_s, first_s if first_s is not None else elapsed_s, counted)


def faust_app(settings: Settings, app_id: str, datadir: str) -> tuple[Any, Any]:
    """A bare faust app as the baseline uses it, and its events topic (raw bytes)."""
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        datadir=datadir,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(
        settings.topic(keys.TOPIC_EVENTS), value_serializer="raw", key_serializer="raw"
    )
    return app, topic


async def stop_faust(app: Any) -> None:
    try:
        await asyncio.wait_for(app.stop(), timeout=30)
    except TimeoutError:
        log.warning("faust app %s did not stop within 30s", app.conf.id)


def build_faust_app(settings: Settings, deps: Deps, app_id: str, datadir: str) -> Any:
    """The baseline: one faust agent that hands batches from stream.take() to handle_batch."""
    app, topic = faust_app(settings, app_id, datadir)

    @app.agent(topic)  # type: ignore[untyped-decorator]
    async def ingest(stream: Any) -> None:
        async for values in stream.take(TAKE_MAX, within=TAKE_WITHIN_S):
            try:
                # take() yields values only; keys matter just for dead letters, and none occur.
                await handle_batch([(None, v) for v in values], deps, now_ms())
            except Exception:  # keep consuming, as the worker would; the run then times out
                log.exception("faust baseline: batch of %d failed", len(values))

    return app


async def run_faust(
    settings: Settings, rules: RulesHolder, prices: PriceTable, n: int, timeout_s: float
) -> Run:
    redis = Redis.from_url(settings.redis_url)
    kafka = KafkaSink(settings)
    await kafka.start()
    windows = WindowStore(redis, settings.dedup_horizon_s)
    deps = Deps(settings, rules, prices, windows, DecisionStore(redis), kafka)
    with tempfile.TemporaryDirectory(prefix="bench-faust-") as datadir:
        app = build_faust_app(settings, deps, f"{settings.consumer_group}-faust", datadir)
        try:
            return await timed_consume(app.start, lambda: counted_events(windows), n, timeout_s)
        finally:
            await stop_faust(app)
            await kafka.close()
            await redis.aclose()


async def run_batched(
    settings: Settings, rules: RulesHolder, prices: PriceTable, n: int, timeout_s: float
) -> Run:
    redis = Redis.from_url(settings.redis_url)
    windows = WindowStore(redis, settings.dedup_horizon_s)
    consumer = EventsConsumer(settings, rules, prices)
    task: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal task
        task = asyncio.create_task(consumer.run())

    async def counted() -> int:
        if task is not None and task.done():
            task.result()  # the consumer died: raise its error now rather than time out
            raise RuntimeError("EventsConsumer.run() returned before all events were counted")
        return await counted_events(windows)

    try:
        return await timed_consume(start, counted, n, timeout_s)
    finally:
        await cancel(task)
        await redis.aclose()


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def ingest_fields(base: Run, cand: Run, n: int) -> dict[str, str]:
    extra = {"base_first_s": f"{base.first_s:.3f}", "cand_first_s": f"{cand.first_s:.3f}"}
    if base.counted < n or cand.counted < n:
        extra["base_counted"] = str(base.counted)
        extra["cand_counted"] = str(cand.counted)
    return extra


async def case_ingest(
    settings: Settings, redis: Redis, n: int, timeout_s: float, rules: RulesHolder
) -> tuple[str, str]:
    """The faust baseline against EventsConsumer, then EventsConsumer at faust's batch size.

    The second line tells the two effects apart: faust's stream machinery, and the smaller
    batches that `take(1000)` hands the pipeline (less pre-aggregation per Redis round trip).
    """
    prices = PriceTable.load()
    await redis.flushdb()
    base = await run_faust(settings, rules, prices, n, timeout_s)
    await redis.flushdb()
    cand = await run_batched(settings, rules, prices, n, timeout_s)
    small = settings.model_copy(
        update={"batch_max_events": TAKE_MAX, "consumer_group": f"{settings.consumer_group}-b"}
    )
    await redis.flushdb()
    cand_small = await run_batched(small, rules, prices, n, timeout_s)
    await redis.flushdb()
    return (
        fmt_case("ingest_faust_vs_batched", n, base, cand, **ingest_fields(base, cand, n)),
        fmt_case(
            f"ingest_batched_{TAKE_MAX}_vs_{settings.batch_max_events}",
            n,
            cand_small,
            cand,
            **ingest_fields(cand_small, cand, n),
        ),
    )


def priced(
    settings: Settings, messages: Sequence[workloads.Message], at_ms: int
) -> list[PricedEvent]:
    prices = PriceTable.load()
    out = []
    for _key, raw in messages:
        event = decode_event(raw, at_ms, settings.max_future_skew_s, MAX_RETENTION_S)
        out.append(PricedEvent(event, price_event(event, prices)))
    return out


async def timed_apply(windows: WindowStore, items: Sequence[PricedEvent], batch: int) -> Run:
    at_ms = now_ms()
    t0 = time.perf_counter()
    counted = 0
    for i in range(0, len(items), batch):
        result = await windows.apply_batch(items[i : i + batch], at_ms)
        counted += len(result.applied)
    return Run(time.perf_counter() - t0, 0.0, counted)


async def case_redis(
    settings: Settings, redis: Redis, messages: Sequence[workloads.Message]
) -> str:
    items = priced(settings, messages, now_ms())
    windows = WindowStore(redis, settings.dedup_horizon_s)
    await redis.flushdb()
    base = await timed_apply(windows, items, 1)
    await redis.flushdb()
    cand = await timed_apply(windows, items, BATCH_EVENTS)
    await redis.flushdb()
    if base.counted != len(items) or cand.counted != len(items):
        log.warning("applied %d / %d of %d events", base.counted, cand.counted, len(items))
    return fmt_case(
        "redis_per_event_vs_batch", len(items), base, cand, cand_batch=str(BATCH_EVENTS)
    )


def partition_batches(
    messages: Sequence[workloads.Message], partitions: int, batch: int
) -> list[list[workloads.Message]]:
    """Batches as `getmany` hands them out: each from one partition (Kafka's key partitioner)."""
    partitioner = DefaultPartitioner()
    ids = list(range(partitions))
    by_partition: list[list[workloads.Message]] = [[] for _ in ids]
    for key, value in messages:
        by_partition[partitioner(key, ids, ids)].append((key, value))
    return [part[i : i + batch] for part in by_partition for i in range(0, len(part), batch)]


def tenants_per_batch(batches: Sequence[Sequence[workloads.Message]]) -> float:
    distinct = [len({key for key, _ in batch}) for batch in batches]  # the key is the tenant
    return sum(distinct) / len(distinct)


async def timed_pipeline(
    deps: Deps, redis: Redis, batches: Sequence[Sequence[workloads.Message]]
) -> Run:
    await redis.flushdb()
    t0 = time.perf_counter()
    counted = 0
    for batch in batches:
        counted += (await handle_batch(batch, deps, now_ms())).applied
    return Run(time.perf_counter() - t0, 0.0, counted)


async def case_batch_mix(
    settings: Settings, redis: Redis, rules: RulesHolder, messages: Sequence[workloads.Message]
) -> str:
    """handle_batch over batches of 1000 mixing all partitions (as faust's take() yields them)
    against batches of 1000 from one partition each (as getmany mostly yields them)."""
    mixed = [list(messages[i : i + TAKE_MAX]) for i in range(0, len(messages), TAKE_MAX)]
    local = partition_batches(messages, settings.topic_partitions, TAKE_MAX)
    kafka = KafkaSink(settings)
    await kafka.start()
    try:
        windows = WindowStore(redis, settings.dedup_horizon_s)
        deps = Deps(settings, rules, PriceTable.load(), windows, DecisionStore(redis), kafka)
        base = await timed_pipeline(deps, redis, mixed)
        cand = await timed_pipeline(deps, redis, local)
    finally:
        await kafka.close()
        await redis.flushdb()
    return fmt_case(
        "pipeline_mixed_vs_partition_batches",
        len(messages),
        base,
        cand,
        batch=str(TAKE_MAX),
        base_tenants_per_batch=f"{tenants_per_batch(mixed):.0f}",
        cand_tenants_per_batch=f"{tenants_per_batch(local):.0f}",
    )


async def consume_faust_bare(settings: Settings, n: int, timeout_s: float) -> Run:
    """faust stream.take() with orjson decode and nothing else: the framework's own ceiling."""
    seen = 0

    async def counted() -> int:
        return seen

    with tempfile.TemporaryDirectory(prefix="bench-faust-") as datadir:
        app, topic = faust_app(settings, f"{settings.consumer_group}-faust-bare", datadir)

        @app.agent(topic)  # type: ignore[untyped-decorator]
        async def count(stream: Any) -> None:
            nonlocal seen
            async for values in stream.take(TAKE_MAX, within=TAKE_WITHIN_S):
                for value in values:
                    orjson.loads(value)
                seen += len(values)

        try:
            return await timed_consume(app.start, counted, n, timeout_s)
        finally:
            await stop_faust(app)


async def consume_aiokafka_bare(settings: Settings, n: int, timeout_s: float) -> Run:
    """aiokafka getmany + orjson decode + commit, as EventsConsumer polls, and nothing else."""
    seen = 0
    consumer = AIOKafkaConsumer(
        settings.topic(keys.TOPIC_EVENTS),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.consumer_group}.bare",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max_events,
        fetch_max_bytes=16 * 1024 * 1024,
    )

    async def loop() -> None:
        nonlocal seen
        while True:
            polled = await consumer.getmany(
                timeout_ms=settings.batch_max_wait_ms, max_records=settings.batch_max_events
            )
            for batch in polled.values():
                for record in batch:
                    orjson.loads(record.value)
                seen += len(batch)
            if polled:
                await consumer.commit({tp: b[-1].offset + 1 for tp, b in polled.items() if b})

    task: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal task
        await consumer.start()
        task = asyncio.create_task(loop())

    async def counted() -> int:
        return seen

    try:
        return await timed_consume(start, counted, n, timeout_s)
    finally:
        await cancel(task)
        await consumer.stop()


async def case_consume(settings: Settings, n: int, timeout_s: float) -> str:
    base = await consume_faust_bare(settings, n, timeout_s)
    cand = await consume_aiokafka_bare(settings, n, timeout_s)
    return fmt_case(
        "consume_only_faust_vs_aiokafka",
        n,
        base,
        cand,
        base_first_s=f"{base.first_s:.3f}",
        cand_first_s=f"{cand.first_s:.3f}",
    )


async def main(args: argparse.Namespace) -> int:
    if not args.redis_url.rstrip("/").endswith("/12"):
        print(
            f"bench_ingest: --redis-url must name database 12, got {args.redis_url!r}",
            file=sys.stderr,
        )
        return 2
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}"
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as data_dir:
        settings = run_settings(args.kafka, args.redis_url, prefix, Path(data_dir))
        if not await services_reachable(settings, "bench_ingest"):
            return 1
        rules = RulesHolder(settings.rules)

        events = workloads.load_events(args.seed, args.events)
        messages = workloads.to_messages(events, now_ms())
        redis = Redis.from_url(settings.redis_url)
        try:
            await ensure_topics(settings)
            await workloads.produce(
                settings.kafka_bootstrap, settings.topic(keys.TOPIC_EVENTS), messages
            )
            for line in await case_ingest(settings, redis, args.events, args.timeout_s, rules):
                print(line, flush=True)
            subset = messages[: args.redis_events]
            print(await case_redis(settings, redis, subset), flush=True)
            subset = messages[: args.pipeline_events]
            print(await case_batch_mix(settings, redis, rules, subset), flush=True)
            print(await case_consume(settings, args.events, args.timeout_s), flush=True)
        finally:
            await redis.flushdb()
            await redis.aclose()
            await delete_run_topics(settings.kafka_bootstrap, prefix)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000, help="events consumed per run")
    parser.add_argument("--redis-events", type=int, default=5_000, help="events in case 2")
    parser.add_argument(
        "--pipeline-events", type=int, default=10_000, help="events in the batch-mix case"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-s", type=float, default=150.0, help="per consume run")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/12", help="database 12; it is flushed"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    # faust and aiokafka narrate start-up and rebalances at INFO; only problems matter here.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parse_args())))
