"""Daily roll-ups for the reports: per-entity day costs and quality, exact and never doubled."""

from __future__ import annotations

import random
from collections import defaultdict

from redis.asyncio import Redis

from detector import keys
from detector.pricing import PriceTable, price_event
from detector.schemas import UsageEvent
from detector.windows.buckets import DAY_S, bucket_start_ms
from detector.windows.counters import PricedEvent, WindowStore
from detector.windows.rollups import read_quality, read_rank

DAY_MS = DAY_S * 1000
FIELDS = {
    "user": "user_id",
    "feature": "feature",
    "model": "model",
    "api_key": "api_key_id",
    "session": "session_id",
}
NOW_MS = 1_767_225_600_000 + 3 * DAY_MS + 3_600_000  # 2026-01-04 01:00 UTC


def generated(n: int, seed: int) -> list[UsageEvent]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        fields: dict[str, object] = {
            "event_id": f"ev{i}",
            "ts_ms": NOW_MS - rng.randrange(3 * DAY_MS),
            "tenant_id": rng.choice(["acme", "globex"]),
            "user_id": rng.choice(["u1", "u2", "u3", None]),
            "feature": rng.choice(["chat", "search"]),
            "model": rng.choice(["gpt-4o", "mystery-model"]),
            "api_key_id": rng.choice(["k1", "k2"]),
            "session_id": f"s{rng.randrange(20)}",
            "input_tokens": rng.randrange(5000),
            "output_tokens": rng.randrange(2000),
        }
        if rng.random() < 0.5:
            fields["cost_usd"] = round(rng.random(), 6)
        if rng.random() < 0.3:
            fields["tags"] = {"quality": rng.choice(["0.25", "0.9", "1", "bad", "1.5"])}
        events.append(UsageEvent.model_validate(fields))
    return events


async def test_rollups_match_an_independent_sum(redis: Redis) -> None:
    table = PriceTable.load()
    store = WindowStore(redis, dedup_horizon_s=7 * DAY_S)
    events = generated(600, seed=7)
    priced = [PricedEvent(ev, price_event(ev, table)) for ev in events]
    # In three batches, the second one replaying part of the first.
    await store.apply_batch(priced[:300], NOW_MS)
    await store.apply_batch(priced[200:450], NOW_MS)
    await store.apply_batch(priced[450:], NOW_MS)

    expected: dict[tuple[str, str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    quality: dict[tuple[str, int], dict[str, list[int]]] = defaultdict(dict)
    for p in priced:
        ev, cost = p.event, p.costs.total_usd_micros
        day = bucket_start_ms(ev.ts_ms, DAY_S)
        expected[(keys.GLOBAL_TENANT, "tenant", day)][ev.tenant_id] += cost
        for scope, field in FIELDS.items():
            entity = getattr(ev, field)
            if entity is not None:
                expected[(ev.tenant_id, scope, day)][entity] += cost
        q = ev.tags.get("quality")
        if q in ("0.25", "0.9", "1"):
            row = quality[(ev.tenant_id, day)].setdefault(ev.model, [0, 0, 0])
            row[0] += 1
            row[1] += round(float(q) * 1_000_000)
            row[2] += cost

    assert len(expected) > 20
    for (tenant, scope, day), costs in expected.items():
        assert await read_rank(redis, tenant, scope, day) == dict(costs), (tenant, scope, day)
    assert any(quality.values())
    for (tenant, day), models in quality.items():
        got = await read_quality(redis, tenant, day)
        assert got == {m: tuple(v) for m, v in models.items()}
    # Users without an id are not members; members with no priced cost still are.
    days = {bucket_start_ms(ev.ts_ms, DAY_S) for ev in events}
    for day in days:
        users = await read_rank(redis, "acme", "user", day)
        assert set(users) <= {"u1", "u2", "u3"}


async def test_rollups_expire_with_the_day_buckets(redis: Redis) -> None:
    table = PriceTable.load()
    store = WindowStore(redis, dedup_horizon_s=DAY_S)
    ev = UsageEvent.model_validate(
        {
            "event_id": "x",
            "ts_ms": NOW_MS,
            "tenant_id": "acme",
            "model": "gpt-4o",
            "user_id": "u1",
            "cost_usd": 2.0,
        }
    )
    await store.apply_batch([PricedEvent(ev, price_event(ev, table))], NOW_MS)
    day = bucket_start_ms(NOW_MS, DAY_S)
    ttl_ms = await redis.pttl(keys.rank_key("acme", "user", day))
    # time to live counted from the writer's clock (NOW_MS), less the milliseconds since
    assert 0 <= day + 71 * DAY_MS - NOW_MS - ttl_ms < 5_000
