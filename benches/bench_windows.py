"""How fast the worker counts a realistic mix, and what each active user costs in Redis.

    .venv/bin/python benches/bench_windows.py [--events 100000] [--users 100000]
        [--profile] [--cases worker,memory]

Cases, one line each:
- worker_vs_bare_consumer: N events of a realistic mix (workloads.Mix: 1,000 tenants, 100,000
  users, 20 features, 10 priced models, heavy-tailed tokens, timestamps in the last 10 minutes)
  on a fresh topic, read by a bare aiokafka consumer (`getmany` + `orjson.loads`, nothing else;
  base) and by detector.worker.EventsConsumer, the real hot path (cand). Each is timed from the
  first batch in hand to the last event counted; ratio = cand_eps / base_eps, below 1. Then,
  on the same topic, `minimal_eps`: the issue's "minimal hand-written pipeline" writing the
  same buckets (consume_minimal: getmany, orjson, each batch summed per tenant, scope, entity
  and bucket, one pipelined HINCRBY per sum; no pricing, dedup, atomicity, rules or models).
- memory_per_user: U users in T tenants, a few events each over the last day, applied with
  WindowStore.apply_batch (batches of 2000 from one partition each, as the worker sees them);
  Redis `used_memory` before and after over U, then one line per key kind from `MEMORY USAGE`
  on a sample of keys of that kind. Dedup sets are per event, so theirs is bytes per event.
- --profile (printed after the cases): handle_batch in-process over the first --profile-events
  events of the mix, in batches of 2000 from one partition each. An unprofiled run gives wall
  time, this process's CPU time, Redis's CPU time and `INFO commandstats` deltas per event, and
  wall and Lua script time split between WindowStore.apply_batch, WindowStore.read_windows and
  the rest (decode, price, rules, decisions, Kafka outputs); a second run under cProfile gives
  the top 15 functions by tottime.

Needs `scripts/services up`. Uses Redis database 13 only (flushed before and after each case)
and topics named benchw-<uuid>.*, deleted at the end. Memory and command figures come from the
whole Redis server, so another client working on another database at the same time shows up
in them; the sampled per-kind sizes do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import logging
import pstats
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import workloads
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from common import delete_run_topics, rules_without_models, run_settings, services_reachable
from redis.asyncio import Redis

from detector import keys
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.ingest.decode import decode_event
from detector.pipeline import Deps, RawMessage, Turn, handle_batch
from detector.pricing import PriceTable, price_event
from detector.rules.holder import RulesHolder
from detector.schemas import Scope, UsageEvent
from detector.sinks.kafka import KafkaSink
from detector.startup import ensure_topics
from detector.windows.buckets import BUCKET_SIZES, MAX_RETENTION_S
from detector.windows.counters import (
    NESTED_FIELDS,
    ApplyResult,
    PricedEvent,
    ReachNeeds,
    Slot,
    WindowStore,
    Zones,
)
from detector.worker import EventsConsumer, now_ms

log = logging.getLogger("bench_windows")

REDIS_DB = 13
BATCH_EVENTS = int(__import__("os").environ.get("BENCH_BATCH", "2000"))
SAMPLE_KEYS = 200  # MEMORY USAGE calls per key kind
# Dedup sets and bucket hashes (one per tenant, scope and bucket) are few and their sizes follow
# the tenants' heavy tail, so a sample would be noisy: every one of them is measured.
MEASURE_ALL_KINDS = frozenset({"seen", "window", *(scope.value for scope in Scope)})
COMMANDS = (
    "evalsha", "get", "set", "mget", "hget", "hmget", "hset", "zincrby", "pfadd", "sadd",
    "smismember", "pexpire",
)  # fmt: skip
MB = 1024 * 1024
GOAL_RATIO, GOAL_EPS = 0.15, 40_000  # the target for the worker against the bare consumer
_WIN_KEY = re.compile(rb"^det:win:\{t:[^}]*\}:([a-z_]+):(\d+)z?:\d+$")  # scope, bucket size
_TENANT_BUCKET = re.compile(rb"^det:win:\{t:[^}]*\}:(\d+)z?:\d+$")  # bucket size


@dataclass
class Span:
    """Events seen by a consumer, from the first batch in hand to the last one done."""

    first_s: float | None = None
    last_s: float = 0.0
    counted: int = 0

    def seconds(self) -> float:
        return self.last_s - self.first_s if self.first_s is not None else 0.0

    def eps(self) -> float:
        return self.counted / self.seconds() if self.seconds() > 0 else 0.0


async def wait_for(span: Span, n: int, timeout_s: float, task: asyncio.Task[None]) -> None:
    deadline = time.perf_counter() + timeout_s
    while span.counted < n and time.perf_counter() < deadline:
        if task.done():
            task.result()  # the consumer died: raise its error rather than time out
            raise RuntimeError("consumer returned before every event was counted")
        await asyncio.sleep(0.01)
    if span.counted < n:
        log.warning("only %d of %d events counted after %.0fs", span.counted, n, timeout_s)


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def timed_consume(
    settings: Settings,
    name: str,
    n: int,
    timeout_s: float,
    handle: Callable[[list[ConsumerRecord[Any, Any]]], Awaitable[None]],
    commit: bool,
) -> Span:
    """Read the events topic in a consumer group of its own, from the earliest offset, handing
    each `getmany` result to `handle` (then committing, with `commit`); timed from the first
    batch in hand to the last handled."""
    span = Span()
    consumer = AIOKafkaConsumer(
        settings.topic(keys.TOPIC_EVENTS),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.consumer_group}.{name}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max_events,
        fetch_max_bytes=16 * 1024 * 1024,
    )

    async def loop() -> None:
        while True:
            polled = await consumer.getmany(
                timeout_ms=settings.batch_max_wait_ms, max_records=settings.batch_max_events
            )
            if not polled:
                continue
            if span.first_s is None:
                span.first_s = time.perf_counter()
            records = [record for batch in polled.values() for record in batch]
            await handle(records)
            if commit:
                await consumer.commit()
            span.counted += len(records)
            span.last_s = time.perf_counter()

    await consumer.start()
    task = asyncio.create_task(loop())
    try:
        await wait_for(span, n, timeout_s, task)
    finally:
        await cancel(task)
        await consumer.stop()
    return span


async def consume_bare(settings: Settings, n: int, timeout_s: float) -> Span:
    """aiokafka getmany + orjson.loads per value, nothing else: the consumer's own ceiling."""

    async def decode(records: list[ConsumerRecord[Any, Any]]) -> None:
        for record in records:
            orjson.loads(record.value)

    return await timed_consume(settings, "bare", n, timeout_s, decode, commit=False)


MINIMAL_SIZES_MS = tuple(b.size_s * 1000 for b in BUCKET_SIZES)  # the worker's bucket sizes
MINIMAL_NESTED = tuple(name for _, name in NESTED_FIELDS)  # the event fields of nested scopes


async def consume_minimal(settings: Settings, redis: Redis, n: int, timeout_s: float) -> Span:
    """The issue's "minimal hand-written pipeline", writing the same buckets as the worker:
    aiokafka getmany, orjson.loads, each batch summed in memory per (tenant, scope, entity,
    bucket) and written with one pipelined HINCRBY per sum (tokens as the amount, no pricing),
    then committed. No validation, dedup, atomicity, rules, models or other metrics."""

    async def write(records: list[ConsumerRecord[Any, Any]]) -> None:
        sums: dict[tuple[str, str], int] = defaultdict(int)
        for record in records:
            ev = orjson.loads(record.value)
            tenant, ts = ev["tenant_id"], int(ev["ts"])
            amount = int(ev.get("input_tokens", 0)) + int(ev.get("output_tokens", 0))
            for size in MINIMAL_SIZES_MS:
                suffix = f":{size // 1000}:{ts - ts % size}"
                sums[(f"min:{{{tenant}}}:tenant{suffix}", tenant)] += amount
                for name in MINIMAL_NESTED:
                    entity = ev.get(name)
                    if entity is not None:
                        sums[(f"min:{{{tenant}}}:{name}{suffix}", entity)] += amount
        pipe = redis.pipeline(transaction=False)
        for (key, entity), amount in sums.items():
            pipe.hincrby(key, entity, amount)
        await pipe.execute()

    return await timed_consume(settings, "minimal", n, timeout_s, write, commit=True)


class TimedConsumer(EventsConsumer):
    """EventsConsumer that notes when its first batch started and its latest one finished."""

    def __init__(
        self, settings: Settings, rules: RulesHolder, prices: PriceTable, span: Span
    ) -> None:
        super().__init__(settings, rules, prices)
        self.span = span

    async def _process(
        self, records: Sequence[ConsumerRecord[Any, Any]], deps: Deps, turn: Turn | None = None
    ) -> None:
        if self.span.first_s is None:
            self.span.first_s = time.perf_counter()
        await super()._process(records, deps, turn)
        self.span.counted += len(records)
        self.span.last_s = time.perf_counter()


async def consume_worker(
    settings: Settings, rules: RulesHolder, prices: PriceTable, n: int, timeout_s: float
) -> Span:
    """The real worker hot path (decode, price, dedup, windows, rules, decisions, outputs)."""
    span = Span()
    task = asyncio.create_task(TimedConsumer(settings, rules, prices, span).run())
    try:
        await wait_for(span, n, timeout_s, task)
    finally:
        await cancel(task)
    return span


async def count_keys(redis: Redis, pattern: str) -> int:
    return sum([1 async for _ in redis.scan_iter(match=pattern, count=10_000)])


async def global_requests(windows: WindowStore) -> int:
    [sums] = await windows.read_windows(
        [(keys.GLOBAL_TENANT, Scope.global_, "all", "1d")], now_ms()
    )
    return int(sums["requests"])


async def case_worker(
    settings: Settings,
    redis: Redis,
    rules: RulesHolder,
    messages: Sequence[workloads.Message],
    timeout_s: float,
) -> str:
    n = len(messages)
    await redis.flushdb()
    base = await consume_bare(settings, n, timeout_s)
    cand = await consume_worker(settings, rules, PriceTable.load(), n, timeout_s)
    counted = await global_requests(WindowStore(redis, settings.dedup_horizon_s))
    decisions = await count_keys(redis, "det:dec:*")
    cooldowns = await count_keys(redis, "det:cool:*")
    await redis.flushdb()
    minimal = await consume_minimal(settings, redis, n, timeout_s)
    await redis.flushdb()
    ratio = cand.eps() / base.eps() if base.eps() > 0 else 0.0
    fields = {
        "case": "worker_vs_bare_consumer",
        "n": str(n),
        "base_s": f"{base.seconds():.3f}",
        "cand_s": f"{cand.seconds():.3f}",
        "ratio": f"{ratio:.4f}x",
        "base_eps": f"{base.eps():.0f}",
        "cand_eps": f"{cand.eps():.0f}",
        "cand_us_per_event": f"{cand.seconds() / max(cand.counted, 1) * 1e6:.0f}",
        "counted_1d": str(counted),
        "decisions": str(decisions),
        "alert_cooldowns": str(cooldowns),
        "goal_met": "yes" if ratio >= GOAL_RATIO and cand.eps() >= GOAL_EPS else "no",
        "minimal_eps": f"{minimal.eps():.0f}",
        "minimal_ratio": f"{minimal.eps() / base.eps() if base.eps() > 0 else 0.0:.4f}x",
    }
    return " ".join(f"{k}={v}" for k, v in fields.items())


def priced(
    settings: Settings, messages: Sequence[workloads.Message], at_ms: int
) -> list[PricedEvent]:
    prices = PriceTable.load()
    out = []
    for _key, raw in messages:
        event = decode_event(raw, at_ms, settings.max_future_skew_s, MAX_RETENTION_S)
        out.append(PricedEvent(event, price_event(event, prices)))
    return out


def key_kind(key: bytes) -> tuple[str, int]:
    """(kind, bucket size in s) of one of our keys; size 0 for keys that are not buckets."""
    if key.startswith(b"det:seen:"):
        return "seen", 0
    found = _TENANT_BUCKET.match(key)
    if found:  # a tenant's bucket hash: every scope's entities
        return "window", int(found.group(1))
    found = _WIN_KEY.match(key)
    if found:
        return found.group(1).decode(), int(found.group(2))
    return key.split(b":", 2)[1].decode() if key.count(b":") else "other", 0


@dataclass
class KindStats:
    keys: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    sample: list[bytes] = field(default_factory=list)


async def scan_kinds(redis: Redis, rng: random.Random) -> dict[str, KindStats]:
    """Every key of the database by kind, with a uniform sample of SAMPLE_KEYS per kind (all
    the keys of the kinds in MEASURE_ALL_KINDS)."""
    kinds: dict[str, KindStats] = defaultdict(KindStats)
    async for key in redis.scan_iter(count=10_000):
        kind, size_s = key_kind(key)
        stats = kinds[kind]
        stats.keys += 1
        stats.sizes[size_s] += 1
        if len(stats.sample) < SAMPLE_KEYS or kind in MEASURE_ALL_KINDS:
            stats.sample.append(key)
        else:  # reservoir sampling: SCAN order follows the hash table, not key names
            slot = rng.randrange(stats.keys)
            if slot < SAMPLE_KEYS:
                stats.sample[slot] = key
    return kinds


async def memory_usage(redis: Redis, sample: Sequence[bytes]) -> float:
    """Mean `MEMORY USAGE key SAMPLES 0` (exact, every element counted) over the sample."""
    sizes: list[int] = []
    for i in range(0, len(sample), 5000):
        pipe = redis.pipeline(transaction=False)
        for key in sample[i : i + 5000]:
            pipe.execute_command("MEMORY USAGE", key, "SAMPLES", 0)
        sizes.extend(int(s) for s in await pipe.execute() if s is not None)
    return sum(sizes) / len(sizes) if sizes else 0.0


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def case_memory(
    settings: Settings, redis: Redis, users: int, tenants: int, per_user: int, seed: int
) -> list[str]:
    mix = workloads.Mix(seed=seed, tenants=tenants, users=users)
    events = workloads.load_user_events(mix, per_user)
    at_ms = now_ms()
    items = priced(settings, workloads.to_messages(events, at_ms), at_ms)
    by_id = {it.event.event_id: it for it in items}
    order = workloads.partition_batches(
        [(it.event.tenant_id.encode(), it.event.event_id.encode()) for it in items],
        settings.topic_partitions,
        BATCH_EVENTS,
    )
    batches = [[by_id[event_id.decode()] for _, event_id in batch] for batch in order]
    windows = WindowStore(redis, settings.dedup_horizon_s, settings.allowed_lateness_s)

    await redis.flushdb()
    before = await used_memory(redis)
    t0 = time.perf_counter()
    applied = 0
    for batch in batches:
        applied += len((await windows.apply_batch(batch, at_ms)).applied)
    apply_s = time.perf_counter() - t0
    after = await used_memory(redis)
    kinds = await scan_kinds(redis, random.Random(seed))
    total_keys = sum(k.keys for k in kinds.values())
    lines = [
        " ".join(
            [
                "case=memory_per_user",
                f"users={users}",
                f"tenants={tenants}",
                f"events={applied}",
                f"events_per_user={per_user}",
                f"bytes_per_user={(after - before) / users:.0f}",
                f"used_mb={(after - before) / MB:.1f}",
                f"keys={total_keys}",
                f"keys_per_user={total_keys / users:.1f}",
                f"apply_s={apply_s:.3f}",
                f"apply_eps={applied / apply_s:.0f}",
            ]
        )
    ]
    for kind, stats in sorted(kinds.items(), key=lambda kv: -kv[1].keys):
        per_key = await memory_usage(redis, stats.sample)
        total_b = per_key * stats.keys
        per = (
            f"bytes_per_event={total_b / applied:.1f}"
            if kind == "seen"
            else (f"bytes_per_user={total_b / users:.1f}")
        )
        sizes = ",".join(f"{s}:{c}" for s, c in sorted(stats.sizes.items()) if s)
        lines.append(
            f"case=memory_per_user kind={kind} keys={stats.keys} bytes_per_key={per_key:.0f} "
            f"est_mb={total_b / MB:.1f} {per}" + (f" by_bucket_s={sizes}" if sizes else "")
        )
    await redis.flushdb()
    return lines


async def command_stats(redis: Redis) -> dict[str, tuple[int, int]]:
    """(calls, usec) of each command in COMMANDS, server-wide."""
    info = await redis.info("commandstats")
    out = {}
    for name in COMMANDS:
        stat = info.get(f"cmdstat_{name}", {})
        out[name] = (int(stat.get("calls", 0)), int(stat.get("usec", 0)))
    return out


async def redis_cpu_s(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class StagedWindowStore(WindowStore):
    """A WindowStore that adds up, per method, the wall time and the Redis script time."""

    def __init__(self, redis: Redis, dedup_horizon_s: int, allowed_lateness_s: int) -> None:
        super().__init__(redis, dedup_horizon_s, allowed_lateness_s)
        self.info = redis
        self.wall_s: defaultdict[str, float] = defaultdict(float)
        self.script_us: defaultdict[str, int] = defaultdict(int)

    async def _begin(self) -> tuple[int, float]:
        return (await command_stats(self.info))["evalsha"][1], time.perf_counter()

    async def _end(self, stage: str, begun: tuple[int, float]) -> None:
        self.wall_s[stage] += time.perf_counter() - begun[1]
        self.script_us[stage] += (await command_stats(self.info))["evalsha"][1] - begun[0]

    async def apply_batch(
        self,
        batch: Sequence[PricedEvent],
        now_ms: int,
        series: Callable[[UsageEvent], list[Slot]] | None = None,
        zones: Zones | None = None,
        reach: ReachNeeds | None = None,
        settle_holds: bool = False,
    ) -> ApplyResult:
        begun = await self._begin()
        result = await super().apply_batch(batch, now_ms, series, zones, reach, settle_holds)
        await self._end("apply_batch", begun)
        return result

    async def read_windows(
        self,
        requests: Sequence[tuple[str, Scope, str, str]],
        now_ms: int,
        zones: Zones | None = None,
    ) -> list[dict[str, float]]:
        begun = await self._begin()
        result = await super().read_windows(requests, now_ms, zones)
        await self._end("read_windows", begun)
        return result


async def run_batches(deps: Deps, batches: Sequence[Sequence[RawMessage]]) -> int:
    counted = 0
    for batch in batches:
        counted += (await handle_batch(batch, deps, now_ms())).applied
    return counted


async def profile_section(
    settings: Settings, redis: Redis, rules: RulesHolder, messages: Sequence[workloads.Message]
) -> list[str]:
    """An unprofiled run for wall, CPU and Redis figures, then a cProfile'd run for the top 15."""
    batches = workloads.partition_batches(messages, settings.topic_partitions, BATCH_EVENTS)
    kafka = KafkaSink(settings)
    await kafka.start()
    try:
        prices = PriceTable.load()
        staged = StagedWindowStore(redis, settings.dedup_horizon_s, settings.allowed_lateness_s)
        deps = Deps(settings, rules, prices, staged, DecisionStore(redis), kafka)
        await redis.flushdb()
        stats0, cpu0 = await command_stats(redis), await redis_cpu_s(redis)
        wall0, py0 = time.perf_counter(), time.process_time()
        n = await run_batches(deps, batches)
        wall_s, py_s = time.perf_counter() - wall0, time.process_time() - py0
        stats1, cpu1 = await command_stats(redis), await redis_cpu_s(redis)

        await redis.flushdb()
        windows = WindowStore(redis, settings.dedup_horizon_s, settings.allowed_lateness_s)
        deps = Deps(settings, rules, prices, windows, DecisionStore(redis), kafka)
        profiler = cProfile.Profile()
        profiler.enable()
        await run_batches(deps, batches)
        profiler.disable()
    finally:
        await kafka.close()
        await redis.flushdb()

    per = 1e6 / max(n, 1)
    script_us = (stats1["evalsha"][1] - stats0["evalsha"][1]) * per / 1e6
    lines = [
        f"profile events={n} batches={len(batches)} wall_us_per_event={wall_s * per:.1f} "
        f"py_cpu_us_per_event={py_s * per:.1f} redis_cpu_us_per_event={(cpu1 - cpu0) * per:.1f} "
        f"evalsha_us_per_event={script_us:.1f}"
    ]
    for stage in ("apply_batch", "read_windows"):
        stage_wall_us = staged.wall_s[stage] * 1e6
        lines.append(
            f"profile stage={stage} wall_us_per_event={stage_wall_us / max(n, 1):.1f} "
            f"redis_script_us_per_event={staged.script_us[stage] / max(n, 1):.1f} "
            f"client_us_per_event={(stage_wall_us - staged.script_us[stage]) / max(n, 1):.1f}"
        )
    rest_us = wall_s * 1e6 - sum(staged.wall_s.values()) * 1e6
    lines.append(f"profile stage=rest wall_us_per_event={rest_us / max(n, 1):.1f}")
    for name in COMMANDS:
        calls = stats1[name][0] - stats0[name][0]
        usec = stats1[name][1] - stats0[name][1]
        lines.append(
            f"profile command={name} calls={calls} calls_per_event={calls / max(n, 1):.2f} "
            f"usec_per_call={usec / max(calls, 1):.2f} usec_per_event={usec / max(n, 1):.1f}"
        )
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(15)
    lines.append(out.getvalue().rstrip())
    return lines


async def main(args: argparse.Namespace) -> int:
    redis_url = f"redis://{args.redis}/{REDIS_DB}"
    prefix = f"benchw-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-windows-") as data_dir:
        settings = run_settings(args.kafka, redis_url, prefix, Path(data_dir))
        if not await services_reachable(settings, "bench_windows"):
            return 1
        rules = RulesHolder(settings.rules)
        if args.models == "off":
            rules = rules_without_models(settings.rules, Path(data_dir))
        mix = workloads.Mix(seed=args.seed, tenants=args.tenants, users=args.mix_users)
        events = workloads.load_mix_events(mix, args.events)
        redis = Redis.from_url(settings.redis_url)
        profile: list[str] = []
        try:
            await ensure_topics(settings)
            # Shifted just before producing so that every event is within the last 10 minutes.
            messages = workloads.to_messages(events, now_ms())
            await workloads.produce(
                settings.kafka_bootstrap, settings.topic(keys.TOPIC_EVENTS), messages
            )
            if "worker" in args.cases:
                line = await case_worker(settings, redis, rules, messages, args.timeout_s)
                print(line, flush=True)
            if "memory" in args.cases:
                for line in await case_memory(
                    settings, redis, args.users, args.tenants, args.events_per_user, args.seed
                ):
                    print(line, flush=True)
            if args.profile:
                subset = workloads.to_messages(events[: args.profile_events], now_ms())
                profile = await profile_section(settings, redis, rules, subset)
        finally:
            await redis.flushdb()
            await redis.aclose()
            await delete_run_topics(settings.kafka_bootstrap, prefix)
    for line in profile:
        print(line, flush=True)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="events in case 1")
    parser.add_argument("--mix-users", type=int, default=100_000, help="users in case 1's mix")
    parser.add_argument("--users", type=int, default=100_000, help="active users in case 2")
    parser.add_argument("--tenants", type=int, default=1000, help="tenants in both cases")
    parser.add_argument("--events-per-user", type=int, default=3, help="events per user, case 2")
    parser.add_argument("--profile", action="store_true", help="add the profile section")
    parser.add_argument(
        "--cases",
        default="worker,memory",
        type=lambda text: set(text.split(",")),
        help="comma-separated cases to run: worker, memory (default both)",
    )
    parser.add_argument("--profile-events", type=int, default=20_000)
    parser.add_argument(
        "--models",
        choices=("on", "off"),
        default="on",
        help="off: the repository's rules without their anomaly section",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per consumer in case 1")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--redis", default="127.0.0.1:6379", help=f"host:port; db {REDIS_DB}")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parse_args())))
