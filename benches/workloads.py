"""Seeded benchmark workloads: cost events built once, cached under benches/.cache/, replayable.

Building and caching use no clock and no network: events are generated with time starting at
0 and cached like that, so the cache depends only on (seed, n). `to_messages` then shifts them
so the newest event lands at the caller's `end_ms` (the windows only count recent events), and
`produce` puts them on a topic; neither is meant to be timed.

Two workloads: `load_events` (detector.simulate's scenario, for bench_ingest.py) and the
realistic mix of `Mix` (`load_mix_events`, `load_user_events`, for bench_windows.py).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from detector.simulate import Scenario, generate

CACHE_DIR = Path(__file__).resolve().parent / ".cache"

# Realistic spread: 300 tenants x 20 users (6,000 users, 900 API keys), sessions that roll every
# 10 minutes (about 18,000 over half an hour), plus one abusive tenant in the second half so the
# rules fire and decisions and alerts get written as they would in production.
TENANTS = 300
USERS_PER_TENANT = 20
DURATION_S = 1800.0

Message = tuple[bytes | None, bytes]  # Kafka key, value


def scenario(seed: int, n: int) -> Scenario:
    """The traffic that yields at least n events (about 1% of them from the abusive tenant)."""
    rate_per_s = n * 1.05 / DURATION_S  # slack: generate() draws Poisson gaps
    return Scenario(
        seed=seed,
        tenants=TENANTS,
        users_per_tenant=USERS_PER_TENANT,
        duration_s=DURATION_S,
        rate_per_s=rate_per_s,
        abuse_tenant="tenant-0",
        abuse_at_s=DURATION_S / 2,
        abuse_rate_per_s=rate_per_s / 50,
    )


def cache_path(seed: int, n: int) -> Path:
    return CACHE_DIR / f"events-seed{seed}-n{n}.jsonl"


def build_events(seed: int, n: int) -> list[dict[str, Any]]:
    """n seeded events with `ts` in ms relative to the first possible event (pure)."""
    events = list(itertools.islice(generate(scenario(seed, n), start_ms=0), n))
    if len(events) < n:
        raise ValueError(f"scenario for seed={seed} yielded {len(events)} events, wanted {n}")
    return events


def load_events(seed: int, n: int) -> list[dict[str, Any]]:
    """The workload of (seed, n), from the cache when it is there, else built and cached."""
    path = cache_path(seed, n)
    if path.exists():
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    events = build_events(seed, n)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    tmp.replace(path)  # a crashed build never leaves half a cache behind
    return events


def to_messages(events: Sequence[dict[str, Any]], end_ms: int) -> list[Message]:
    """Kafka (key, value) pairs keyed by tenant, shifted so the newest event is at end_ms."""
    shift_ms = end_ms - max(int(e["ts"]) for e in events)
    out: list[Message] = []
    for event in events:
        shifted = dict(event, ts=int(event["ts"]) + shift_ms)
        out.append((str(event["tenant_id"]).encode(), orjson.dumps(shifted)))
    return out


async def produce(bootstrap: str, topic: str, messages: Sequence[Message]) -> None:
    """Put every message on the topic with one producer; return once Kafka acknowledged all."""
    await wait_until_served(bootstrap, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in messages]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def wait_until_served(bootstrap: str, topic: str) -> None:
    """Return once every partition's leader answers for it.

    A topic created a moment ago is listed with its leaders before they serve it, and the
    producer's first batches would come back NotLeaderForPartition (retried, but noisy).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # fetches fresh metadata
        partitions = consumer.partitions_for_topic(topic) or set()
        await consumer.end_offsets([TopicPartition(topic, p) for p in sorted(partitions)])
    finally:
        await consumer.stop()


# A realistic production mix for the window benchmarks (bench_windows.py): many tenants with a
# heavy tail of users, sessions and API keys, models from the packaged price table, heavy-tailed
# token counts. Pure and seeded like the workload above; only `ts` is relative (ms from 0).
MIX_FEATURES: tuple[str, ...] = (
    "chat", "search", "summarize", "agent", "code-review", "autocomplete", "translate",
    "extract", "classify", "rag-answer", "email-draft", "meeting-notes", "sql-gen", "support-bot",
    "doc-qa", "title-gen", "moderation", "embeddings-rerank", "planner", "eval-judge",
)  # fmt: skip
# (model, provider, weight, median input tokens, output scale, reasoning model)
MIX_MODELS: tuple[tuple[str, str, float, int, int, bool], ...] = (
    ("gpt-4o-mini", "openai", 30, 900, 180, False),
    ("gpt-4o", "openai", 14, 1400, 300, False),
    ("claude-sonnet-4-5", "anthropic", 14, 2500, 400, False),
    ("gemini-2.5-flash", "google", 12, 1800, 250, False),
    ("claude-haiku-4-5", "anthropic", 8, 1200, 200, False),
    ("gpt-4.1-mini", "openai", 7, 1000, 200, False),
    ("gemini-2.5-pro", "google", 4, 3000, 500, False),
    ("gpt-5-mini", "openai", 5, 1500, 300, True),
    ("o4-mini", "openai", 3, 1200, 250, True),
    ("deepseek-chat", "deepseek", 3, 1500, 300, False),
)
# What a gateway that bills itself reports, in USD per million tokens (input, output): rough list
# prices, so cost_usd drifts a little from the table as a real gateway's bill would.
_GATEWAY_USD_PER_MTOK = {
    "gpt-4o-mini": (0.15, 0.6), "gpt-4o": (2.5, 10.0), "claude-sonnet-4-5": (3.0, 15.0),
    "gemini-2.5-flash": (0.3, 2.5), "claude-haiku-4-5": (1.0, 5.0), "gpt-4.1-mini": (0.4, 1.6),
    "gemini-2.5-pro": (1.25, 10.0), "gpt-5-mini": (0.25, 2.0), "o4-mini": (1.1, 4.4),
    "deepseek-chat": (0.27, 1.1),
}  # fmt: skip
_MODEL_W = [m[2] for m in MIX_MODELS]
_FEATURE_W = [1.0 / (i + 1) for i in range(len(MIX_FEATURES))]
MAX_INPUT_TOKENS = 1_000_000
MAX_OUTPUT_TOKENS = 64_000
MIX_VERSION = 1  # bump when the generator changes, so that old caches are not reused


@dataclass(frozen=True)
class Mix:
    """Who sends traffic: `users` spread over `tenants` by a Zipf law (a few big tenants)."""

    seed: int = 11
    tenants: int = 1000
    users: int = 100_000
    tenant_zipf: float = 1.0  # users of the i-th tenant ~ 1 / i**tenant_zipf
    users_per_key: int = 400  # a tenant has 1 + users // users_per_key API keys (at most 20)
    cost_usd_share: float = 0.15  # events whose gateway reports its own bill
    error_share: float = 0.01
    session_s: int = 600  # sessions roll over every 10 minutes, at a per-user phase


@dataclass(frozen=True)
class Population:
    user_tenant: list[int]  # tenant index of each user
    user_key: list[int]  # API key index (within its tenant) of each user
    tenant_users: list[int]


def population(mix: Mix) -> Population:
    """Users per tenant by largest remainder on Zipf weights (every tenant has at least one)."""
    weights = [1.0 / (i + 1) ** mix.tenant_zipf for i in range(mix.tenants)]
    spare = mix.users - mix.tenants
    if spare < 0:
        raise ValueError(f"need at least one user per tenant: {mix.users} < {mix.tenants}")
    total = sum(weights)
    exact = [spare * w / total for w in weights]
    counts = [1 + int(x) for x in exact]
    by_remainder = sorted(range(mix.tenants), key=lambda i: (int(exact[i]) - exact[i], i))
    for i in by_remainder[: mix.users - sum(counts)]:
        counts[i] += 1
    user_tenant: list[int] = []
    user_key: list[int] = []
    for tenant, count in enumerate(counts):
        keys_n = min(20, 1 + count // mix.users_per_key)
        user_tenant.extend([tenant] * count)
        user_key.extend(j % keys_n for j in range(count))
    return Population(user_tenant, user_key, counts)


def _mix_event(
    mix: Mix, rng: random.Random, pop: Population, user: int, ts_ms: int, event_id: str
) -> dict[str, Any]:
    tenant = f"t{pop.user_tenant[user]}"
    model, provider, _, median_in, scale_out, reasoning = rng.choices(MIX_MODELS, _MODEL_W)[0]
    input_tokens = min(MAX_INPUT_TOKENS, max(1, int(rng.lognormvariate(math.log(median_in), 1.0))))
    # Pareto tail: most answers are short, a few run to tens of thousands of tokens.
    output_tokens = min(MAX_OUTPUT_TOKENS, int(scale_out * (rng.paretovariate(1.4) - 0.5)))
    error = rng.random() < mix.error_share
    if error:
        output_tokens = 0
    phase_ms = (user * 7919) % (mix.session_s * 1000)
    event: dict[str, Any] = {
        "event_id": event_id,
        "ts": ts_ms,
        "tenant_id": tenant,
        "user_id": f"{tenant}-u{user}",
        "feature": rng.choices(MIX_FEATURES, _FEATURE_W)[0],
        "api_key_id": f"{tenant}-k{pop.user_key[user]}",
        "session_id": f"u{user}-s{(ts_ms + phase_ms) // (mix.session_s * 1000)}",
        "model": model,
        "provider": provider,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "status": "error" if error else "ok",
        "latency_ms": round(rng.lognormvariate(7.0, 0.8), 1),
    }
    if reasoning and not error:
        event["reasoning_tokens"] = int(output_tokens * rng.lognormvariate(0.5, 0.7))
    if rng.random() < 0.3:
        event["cached_input_tokens"] = int(input_tokens * rng.uniform(0.2, 0.9))
    if rng.random() < mix.cost_usd_share:
        usd_in, usd_out = _GATEWAY_USD_PER_MTOK[model]
        out = output_tokens + int(event.get("reasoning_tokens", 0))
        event["cost_usd"] = round((input_tokens * usd_in + out * usd_out) / 1e6, 8)
    return event


def build_mix_events(mix: Mix, n: int, span_s: float) -> list[dict[str, Any]]:
    """n events over span_s seconds, each from a user drawn by a heavy-tailed activity level."""
    rng = random.Random(mix.seed)
    pop = population(mix)
    activity = [rng.lognormvariate(0.0, 1.5) for _ in range(mix.users)]
    users = rng.choices(range(mix.users), weights=activity, k=n)
    offsets_ms = sorted(int(rng.random() * span_s * 1000) for _ in range(n))
    return [
        _mix_event(mix, rng, pop, user, ts_ms, f"m{mix.seed}-{i}")
        for i, (user, ts_ms) in enumerate(zip(users, offsets_ms, strict=True))
    ]


def build_user_events(mix: Mix, per_user: int, span_s: float) -> list[dict[str, Any]]:
    """per_user events for every user over span_s seconds, each user in one session."""
    rng = random.Random(mix.seed)
    pop = population(mix)
    out = []
    for user in range(mix.users):
        for j in range(per_user):
            ts_ms = int(rng.random() * span_s * 1000)
            event = _mix_event(mix, rng, pop, user, ts_ms, f"a{mix.seed}-{user}-{j}")
            event["session_id"] = f"u{user}-s0"
            out.append(event)
    out.sort(key=lambda e: int(e["ts"]))
    return out


def cached(name: str, build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The workload cached as benches/.cache/<name>.jsonl, built and cached when missing."""
    path = CACHE_DIR / f"{name}.jsonl"
    if path.exists():
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    events = build()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    tmp.replace(path)
    return events


def mix_tag(mix: Mix) -> str:
    """Short digest of every Mix field and the generator version, for cache file names."""
    return hashlib.sha256(f"{MIX_VERSION}:{mix!r}".encode()).hexdigest()[:8]


def load_mix_events(mix: Mix, n: int, span_s: float = 600.0) -> list[dict[str, Any]]:
    """build_mix_events, cached."""
    name = f"mix-{mix_tag(mix)}-seed{mix.seed}-u{mix.users}-n{n}-span{span_s:.0f}"
    return cached(name, lambda: build_mix_events(mix, n, span_s))


def load_user_events(mix: Mix, per_user: int, span_s: float = 86_400.0) -> list[dict[str, Any]]:
    """build_user_events, cached."""
    name = f"users-{mix_tag(mix)}-seed{mix.seed}-u{mix.users}-k{per_user}-span{span_s:.0f}"
    return cached(name, lambda: build_user_events(mix, per_user, span_s))


def partition_batches(
    messages: Sequence[Message], partitions: int, batch: int
) -> list[list[Message]]:
    """Batches as `getmany` hands them out: each from one partition (Kafka's key partitioner)."""
    partitioner = DefaultPartitioner()
    ids = list(range(partitions))
    by_partition: list[list[Message]] = [[] for _ in ids]
    for key, value in messages:
        by_partition[partitioner(key, ids, ids)].append((key, value))
    return [part[i : i + batch] for part in by_partition for i in range(0, len(part), batch)]
