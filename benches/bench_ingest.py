"""Where the worker's hot path belongs, measured on the real stack (Kafka and Redis on loopback).

    /tmp/probe-venv/bin/python benches/bench_ingest.py [--events 50000]

Cases, one line each:
- ingest_faust_vs_batched: the same pre-produced topic consumed end to end (decode, price,
  windows, rules, decisions, Kafka outputs) by a faust agent over `stream.take(1000, within=0.2)`
  (base) and by detector.worker.EventsConsumer, aiokafka `getmany` + commit (cand). Each run
  starts from the earliest offset with its own consumer group and an empty Redis database, and
  is timed from start until the global 1d window counts every event.
- redis_per_event_vs_batch: WindowStore.apply_batch one event at a time (base) against the same
  events in batches of 2000 (cand); decoding and pricing happen before the clock starts.

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
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from redis.asyncio import Redis

import workloads
from detector import keys
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.errors import ConfigError
from detector.ingest.decode import decode_event
from detector.pipeline import Deps, handle_batch
from detector.pricing import PriceTable, price_event
from detector.rules.holder import RulesHolder
from detector.schemas import Scope
from detector.sinks.kafka import KafkaSink
from detector.startup import check_kafka, check_redis, ensure_topics
from detector.windows.buckets import MAX_RETENTION_S
from detector.windows.counters import PricedEvent, WindowStore
from detector.worker import EventsConsumer, now_ms

log = logging.getLogger("bench_ingest")

REPO = Path(__file__).resolve().parent.parent
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
    [sums] = await windows.read_windows([(keys.GLOBAL_TENANT, Scope.global_, "all", "1d")], now_ms())
    return int(sums["requests"])


async def timed_consume(
    start: Callable[[], Awaitable[None]], windows: WindowStore, n: int, timeout_s: float
) -> Run:
    """Call start(), then poll Redis until n events are counted or timeout_s has passed."""
    t0 = time.perf_counter()
    await start()
    first_s: float | None = None
    counted = 0
    while True:
        counted = await counted_events(windows)
        elapsed_s = time.perf_counter() - t0
        if counted and first_s is None:
            first_s = elapsed_s
        if counted >= n or elapsed_s > timeout_s:
            break
        await asyncio.sleep(POLL_S)
    if counted < n:
        log.warning("only %d of %d events counted after %.0fs", counted, n, elapsed_s)
    return Run(elapsed_s, first_s if first_s is not None else elapsed_s, counted)


def build_faust_app(settings: Settings, deps: Deps, app_id: str, datadir: str) -> Any:
    """The baseline: one faust agent that hands batches from stream.take() to handle_batch."""
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

    @app.agent(topic)
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
            return await timed_consume(app.start, windows, n, timeout_s)
        finally:
            try:
                await asyncio.wait_for(app.stop(), timeout=30)
            except TimeoutError:
                log.warning("faust app did not stop within 30s")
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

    try:
        return await timed_consume(start, windows, n, timeout_s)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await redis.aclose()


async def case_ingest(
    settings: Settings, redis: Redis, n: int, timeout_s: float, rules: RulesHolder
) -> str:
    prices = PriceTable.load()
    await redis.flushdb()
    base = await run_faust(settings, rules, prices, n, timeout_s)
    await redis.flushdb()
    cand = await run_batched(settings, rules, prices, n, timeout_s)
    extra = {
        "base_first_s": f"{base.first_s:.3f}",
        "cand_first_s": f"{cand.first_s:.3f}",
    }
    if base.counted < n or cand.counted < n:
        extra["base_counted"] = str(base.counted)
        extra["cand_counted"] = str(cand.counted)
    return fmt_case("ingest_faust_vs_batched", n, base, cand, **extra)


def priced(settings: Settings, messages: Sequence[workloads.Message], at_ms: int) -> list[Any]:
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


async def case_redis(settings: Settings, redis: Redis, messages: Sequence[workloads.Message]) -> str:
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


async def delete_run_topics(settings: Settings, prefix: str) -> None:
    """Remove what this run left on the broker: its topics and its consumer groups."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await admin.delete_topics(topics)
        groups = [f"{settings.consumer_group}-faust", f"{settings.consumer_group}.events"]
        with contextlib.suppress(KafkaError):
            await admin.delete_consumer_groups(groups)
    finally:
        await admin.close()


async def main(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}"
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as data_dir:
        settings = Settings(
            kafka_bootstrap=args.kafka,
            redis_url=args.redis_url,
            rules=REPO / "rules.yaml",
            topic_prefix=f"{prefix}.",
            consumer_group=prefix,
            data_dir=Path(data_dir),
            log_level="WARNING",
        )
        try:
            await check_redis(settings)
            await check_kafka(settings)
        except ConfigError as exc:
            print(f"bench_ingest: {exc}", file=sys.stderr)
            return 1
        rules = RulesHolder(settings.rules)

        events = workloads.load_events(args.seed, args.events)
        messages = workloads.to_messages(events, now_ms())
        await ensure_topics(settings)
        redis = Redis.from_url(settings.redis_url)
        try:
            await workloads.produce(
                settings.kafka_bootstrap, settings.topic(keys.TOPIC_EVENTS), messages
            )
            print(await case_ingest(settings, redis, args.events, args.timeout_s, rules))
            subset = messages[: args.redis_events]
            print(await case_redis(settings, redis, subset))
        finally:
            await redis.flushdb()
            await redis.aclose()
            await delete_run_topics(settings, prefix)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000, help="events consumed per run")
    parser.add_argument("--redis-events", type=int, default=5_000, help="events in case 2")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-s", type=float, default=150.0, help="per consume run")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # faust and aiokafka narrate start-up and rebalances at INFO; only problems matter here.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parse_args())))
