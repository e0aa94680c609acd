"""Seeded benchmark workloads: cost events built once, cached under benches/.cache/, replayable.

Building and caching use no clock and no network: events are generated with time starting at
0 and cached like that, so the cache depends only on (seed, n). `to_messages` then shifts them
so the newest event lands at the caller's `end_ms` (the windows only count recent events), and
`produce` puts them on a topic; neither is meant to be timed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

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
