"""The worker with anomaly models off and on, on the same pre-produced topic, in one process.

    .venv/bin/python benches/anomaly/bench_models.py [--events 50000] [--rounds 2]

Each run is detector.worker.EventsConsumer (aiokafka `getmany`, the whole pipeline, as
bench_ingest.py's `ingest_faust_vs_batched` candidate) from the earliest offset with its own
consumer group on an emptied Redis database, timed until the global 1d window counts every event.
Base: the repository's rules.yaml without its `anomaly:` section; cand: the whole file. Rounds
alternate off/on so drift on a shared machine hits both. Prints one line per round plus the
number of modelled entities and intervals the `on` run had; ratio = base_s / cand_s (1.00 = no
cost, 0.77 = models cost 30%).

Workload: benches/workloads.py's seeded events (300 tenants x 20 users), shifted to end now.
Redis: DETECTOR_BENCH_REDIS_URL (default redis://127.0.0.1:6379/2), flushed between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workloads
from bench_ingest import Run, counted_events, fmt_case, timed_consume
from common import REPO, delete_run_topics, rules_without_models, run_settings, services_reachable
from redis.asyncio import Redis

from detector import keys
from detector.config import Settings
from detector.pricing import PriceTable
from detector.rules.holder import RulesHolder
from detector.startup import ensure_topics
from detector.windows.counters import WindowStore
from detector.worker import EventsConsumer, now_ms


async def run_worker(
    settings: Settings, rules: RulesHolder, prices: PriceTable, n: int, timeout_s: float
) -> Run:
    """bench_ingest's batched run, except that stopping the consumer is bounded: on this shared
    machine aiokafka's leave-group at stop has been seen to wait forever."""
    redis = Redis.from_url(settings.redis_url)
    windows = WindowStore(redis, settings.dedup_horizon_s)
    task: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal task
        task = asyncio.create_task(EventsConsumer(settings, rules, prices).run())

    async def counted() -> int:
        if task is not None and task.done():
            task.result()
            raise RuntimeError("EventsConsumer.run() returned before all events were counted")
        return await counted_events(windows)

    try:
        return await timed_consume(start, counted, n, timeout_s)
    finally:
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=15)
            if not done:
                print("bench_models: the consumer did not stop within 15s; left behind",
                      file=sys.stderr)  # fmt: skip
        await redis.aclose()


async def modelled(redis_url: str) -> tuple[int, int]:
    """(tenants with models, modelled entities) in the database after a run."""
    redis = Redis.from_url(redis_url)
    tenants = entities = 0
    try:
        async for key in redis.scan_iter(match="det:anom:*:idx", count=1000):
            tenants += 1
            entities += int(await redis.hlen(key))
    finally:
        await redis.aclose()
    return tenants, entities


async def flush(redis_url: str) -> None:
    # A fresh connection each time: a consumer cancelled mid-batch can leave a shared pool's
    # connection waiting on a reply that never comes.
    redis = Redis.from_url(redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


async def main(args: argparse.Namespace) -> int:
    redis_url = os.environ.get("DETECTOR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
    prefix = f"bench-anom-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        data_dir = Path(tmp)
        settings = run_settings(args.kafka, redis_url, prefix, data_dir)
        if not await services_reachable(settings, "bench_models"):
            return 1
        rules_off = rules_without_models(REPO / "rules.yaml", data_dir)
        rules_on = RulesHolder(REPO / "rules.yaml")
        assert rules_on().anomaly is not None
        prices = PriceTable.load()
        events = workloads.load_events(args.seed, args.events)
        span_min = (max(int(e["ts"]) for e in events) - min(int(e["ts"]) for e in events)) / 6e4
        messages = workloads.to_messages(events, now_ms())
        try:
            await ensure_topics(settings)
            await workloads.produce(
                settings.kafka_bootstrap, settings.topic(keys.TOPIC_EVENTS), messages
            )
            for round_no in range(args.rounds):
                runs = []
                for name, rules in (("off", rules_off), ("on", rules_on)):
                    await flush(redis_url)
                    group = f"{settings.consumer_group}-{name}-{round_no}"
                    run_as = settings.model_copy(update={"consumer_group": group})
                    runs.append(await run_worker(run_as, rules, prices, args.events, 300.0))
                tenants, entities = await modelled(redis_url)
                print(fmt_case("worker_models_off_vs_on", args.events, runs[0], runs[1],
                               round=str(round_no), span_min=f"{span_min:.1f}",
                               modelled_tenants=str(tenants), modelled_entities=str(entities)),
                      flush=True)  # fmt: skip
        finally:
            await flush(redis_url)
            await delete_run_topics(settings.kafka_bootstrap, prefix)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parse_args())))
