"""The spend windows on a real Redis Cluster (three primaries from Debian's redis-server, see
redis_cluster.py and conftest's `cluster`), the window store on redis-py's cluster client.
Every Lua call must stay in one slot (a tenant's, or the global one): a call that touched a key
of another node would fail."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from detector.pricing import PriceTable, price_event
from detector.schemas import Scope, UsageEvent
from detector.windows.counters import PricedEvent, ReachNeeds, WindowStore


def _events(table: PriceTable, now_ms: int, n: int) -> list[PricedEvent]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        event = UsageEvent(
            event_id=f"e{i}",
            ts_ms=now_ms - rng.randrange(0, 600_000),
            tenant_id=f"tenant-{i % 40}",
            user_id=f"u{rng.randrange(25)}",
            feature=rng.choice(["chat", "search"]),
            model=rng.choice(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"]),
            api_key_id=f"k{rng.randrange(3)}",
            session_id=f"s{rng.randrange(60)}",
            input_tokens=rng.randrange(1, 4000),
            output_tokens=rng.randrange(0, 2000),
        )
        out.append(PricedEvent(event, price_event(event, table)))
    return out


async def test_windows_on_a_cluster_count_every_event_once(cluster: RedisCluster) -> None:
    table = PriceTable.load()
    now_ms = time.time_ns() // 1_000_000
    items = _events(table, now_ms, 2000)
    store = WindowStore(cluster, dedup_horizon_s=3600, allowed_lateness_s=900)
    reach = ReachNeeds(frozenset({Scope.user}), key_users=True, key_tenants=True, key_window_s=3600)
    # Delivered at least once: every batch again, and duplicates inside batches.
    shuffled = items + items[::7]
    random.Random(3).shuffle(shuffled)
    applied = 0
    for start in range(0, len(shuffled), 500):
        result = await store.apply_batch(shuffled[start : start + 500], now_ms, reach=reach)
        applied += len(result.applied)
    for start in range(0, len(items), 500):
        again = await store.apply_batch(items[start : start + 500], now_ms, reach=reach)
        assert again.applied == []
    assert applied == len(items)

    expected: dict[tuple[str, Scope, str], int] = defaultdict(int)
    for it in items:
        ev = it.event
        expected[("_global", Scope.global_, "all")] += it.costs.total_usd_micros
        expected[(ev.tenant_id, Scope.tenant, ev.tenant_id)] += it.costs.total_usd_micros
        for scope in (Scope.user, Scope.feature, Scope.model, Scope.api_key, Scope.session):
            entity = ev.entity(scope)
            assert entity is not None
            expected[(ev.tenant_id, scope, entity)] += it.costs.total_usd_micros
    asks = list(expected)
    sums = await store.read_windows([(*ask, "1h") for ask in asks], now_ms)
    got = {ask: round(s["cost_usd"] * 1_000_000) for ask, s in zip(asks, sums, strict=True)}
    assert got == dict(expected)

    # The tenants' keys really are spread over the nodes.
    holding = 0
    for node in cluster.get_primaries():
        plain = Redis(host=node.host, port=int(node.port))
        holding += 1 if await plain.dbsize() > 0 else 0
        await plain.aclose()
    assert holding >= 2


async def test_scripts_flushed_on_the_nodes_are_loaded_again(cluster: RedisCluster) -> None:
    table = PriceTable.load()
    now_ms = time.time_ns() // 1_000_000
    items = _events(table, now_ms, 200)
    store = WindowStore(cluster, dedup_horizon_s=3600)
    await store.apply_batch(items[:100], now_ms)
    await cluster.script_flush()  # as after a node restart or failover
    with pytest.raises(NoScriptError):
        await store.apply_batch(items[100:], now_ms)
    await asyncio.sleep(0)
    result = await store.apply_batch(items, now_ms)  # the caller's retry
    assert len(result.applied) == 100 and len(result.duplicates) == 100
    [total] = await store.read_windows([("_global", Scope.global_, "all", "1h")], now_ms)
    assert total["requests"] == 200
    assert round(total["cost_usd"] * 1_000_000) == sum(it.costs.total_usd_micros for it in items)
