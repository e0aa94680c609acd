"""Memory per modelled entity: in the worker process and in Redis.

    .venv/bin/python benches/anomaly/memory.py [--entities 2000] [--intervals 400]

Builds `--entities` states with the repository's rules.yaml detector, each fed `--intervals`
intervals through the worker's `_judge` (400: past the detector's window, so its buffers are
full; up to the warm-up, 60 in rules.yaml, no model is built yet), then prints the process's
resident memory growth per entity (river's rolling quantiles live in Rust, out of tracemalloc's
sight, hence RSS) and, after writing them through ModelStore, the Redis memory per entity
(MEMORY USAGE of the tenant's two hashes). Redis: DETECTOR_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/2), flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
from pathlib import Path

from redis.asyncio import Redis

from detector import keys
from detector.anomaly.intervals import ClosedInterval
from detector.anomaly.state import EntityState, ModelStore
from detector.anomaly.watch import _judge, signature
from detector.rules.loader import load_rules
from detector.schemas import Scope

ROOT = Path(__file__).resolve().parents[2]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def main(args: argparse.Namespace) -> None:
    rule = load_rules(ROOT / "rules.yaml").anomaly
    assert rule is not None
    rng = random.Random(1)
    gc.collect()
    before = rss_kib()
    states = {}
    for i in range(args.entities):
        entity = ("acme", Scope.user, f"u{i}")
        # Through the worker's own judging code: the model is built once the entity has spent
        # in as many intervals as the warm-up, so a young entity holds its few intervals only.
        state = EntityState(signature(rule), None)
        for n in range(args.intervals):
            x = rng.lognormvariate(0, 0.5)
            parts = {(Scope.feature, f"f{n % 3}"): int(x * 1e6)}
            _judge(rule, state, ClosedInterval(entity, n * 60_000, int(x * 1e6), 1, parts))
            state.last_start_ms = n * 60_000
        states[entity] = state
    gc.collect()
    grown = (rss_kib() - before) * 1024
    redis = Redis.from_url(os.environ.get("DETECTOR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"))
    await redis.flushdb()
    written = await ModelStore(redis).save(states, rule.idle_expiry_s)
    used = 0
    for key in (keys.anomaly_models_key("acme"), keys.anomaly_index_key("acme")):
        used += int(await redis.memory_usage(key, samples=0) or 0)
    await redis.flushdb()
    await redis.aclose()
    n = args.entities
    print(
        f"case=memory_per_entity entities={n} intervals={args.intervals} "
        f"detector={rule.detector} process_bytes={grown / n:.0f} "
        f"pickle_bytes={written / n:.0f} redis_bytes={used / n:.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--intervals", type=int, default=400)
    asyncio.run(main(parser.parse_args()))
