"""Windows in real Redis: exact sums across scopes, duplicates never counted twice."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from detector.pricing import PriceTable, price_event
from detector.schemas import Scope, UsageEvent
from detector.windows.counters import PricedEvent, WindowStore


def priced(table: PriceTable, **fields: object) -> PricedEvent:
    base: dict[str, object] = {"tenant_id": "acme", "model": "gpt-4o"}
    base.update(fields)
    event = UsageEvent.model_validate(base)
    return PricedEvent(event, price_event(event, table))


async def test_batch_counts_every_scope_once(redis: Redis) -> None:
    table = PriceTable.load()
    store = WindowStore(redis, dedup_horizon_s=3600)
    now_ms = time.time_ns() // 1_000_000
    events = [
        priced(
            table,
            event_id="a",
            ts_ms=now_ms,
            user_id="u1",
            feature="chat",
            cost_usd=0.5,
            input_tokens=10,
            output_tokens=5,
            api_key_id="k1",
            session_id="s1",
        ),
        priced(
            table,
            event_id="b",
            ts_ms=now_ms,
            user_id="u2",
            feature="chat",
            cost_usd=0.25,
            input_tokens=20,
            output_tokens=1,
            status="error",
        ),
        priced(table, event_id="a", ts_ms=now_ms, user_id="u1", cost_usd=0.5),  # repeat in batch
    ]
    result = await store.apply_batch(events, now_ms)
    assert len(result.applied) == 2 and len(result.duplicates) == 1

    # The same events in a later batch (a redelivery) change nothing.
    again = await store.apply_batch(events[:2], now_ms)
    assert again.applied == [] and len(again.duplicates) == 2

    reads = [
        ("acme", Scope.tenant, "acme", "1h"),
        ("acme", Scope.user, "u1", "5m"),
        ("acme", Scope.feature, "chat", "1d"),
        ("acme", Scope.model, "gpt-4o", "today"),
        ("acme", Scope.api_key, "k1", "1m"),
        ("acme", Scope.session, "s1", "7d"),
        ("acme", Scope.global_, "all", "30d"),
    ]
    tenant, user, feature, model, key, session, total = await store.read_windows(reads, now_ms)
    assert tenant["cost_usd"] == 0.75 and tenant["requests"] == 2 and tenant["errors"] == 1
    assert tenant["input_tokens"] == 30 and tenant["output_tokens"] == 6
    assert user["cost_usd"] == 0.5 and user["requests"] == 1
    assert feature["cost_usd"] == 0.75
    assert model["cost_usd"] == 0.75
    assert key["cost_usd"] == 0.5 and session["cost_usd"] == 0.5
    assert total["cost_usd"] == 0.75
    # The given cost is split between input and output in the price table's proportions.
    assert tenant["input_cost_usd"] + tenant["output_cost_usd"] == 0.75


async def test_partly_duplicate_batch_applies_only_new_events(redis: Redis) -> None:
    table = PriceTable.load()
    store = WindowStore(redis, dedup_horizon_s=3600)
    now_ms = time.time_ns() // 1_000_000
    first = [priced(table, event_id=f"e{i}", ts_ms=now_ms, cost_usd=1.0) for i in range(3)]
    await store.apply_batch(first, now_ms)
    mixed = first[1:] + [
        priced(table, event_id=f"e{i}", ts_ms=now_ms, cost_usd=1.0) for i in (3, 4)
    ]
    result = await store.apply_batch(mixed, now_ms)
    assert sorted(p.event.event_id for p in result.applied) == ["e3", "e4"]
    assert sorted(p.event.event_id for p in result.duplicates) == ["e1", "e2"]
    [tenant] = await store.read_windows([("acme", Scope.tenant, "acme", "1h")], now_ms)
    assert tenant["cost_usd"] == 5.0 and tenant["requests"] == 5


async def test_unpriced_model_is_counted_not_zeroed(redis: Redis) -> None:
    table = PriceTable.load()
    store = WindowStore(redis, dedup_horizon_s=3600)
    now_ms = time.time_ns() // 1_000_000
    item = priced(table, event_id="x", ts_ms=now_ms, model="in-house-llm-v9", input_tokens=100)
    assert not item.costs.priced
    await store.apply_batch([item], now_ms)
    [tenant] = await store.read_windows([("acme", Scope.tenant, "acme", "1h")], now_ms)
    assert tenant["requests"] == 1 and tenant["unpriced_requests"] == 1
    assert tenant["input_tokens"] == 100


async def test_late_event_skips_expired_buckets_only(redis: Redis) -> None:
    table = PriceTable.load()
    store = WindowStore(redis, dedup_horizon_s=3600)
    now_ms = time.time_ns() // 1_000_000
    five_hours_ago = now_ms - 5 * 3600 * 1000
    await store.apply_batch(
        [priced(table, event_id="late", ts_ms=five_hours_ago, cost_usd=2.0)], now_ms
    )
    short, day = await store.read_windows(
        [("acme", Scope.tenant, "acme", "1h"), ("acme", Scope.tenant, "acme", "1d")], now_ms
    )
    assert short["cost_usd"] == 0.0
    assert day["cost_usd"] == 2.0
    # Minute and 5-minute buckets that old are past retention and were never created.
    assert await redis.keys("det:win:{t:acme}:60:*") == []
    assert await redis.keys("det:win:{t:acme}:300:*") == []
    [hour] = await redis.keys("det:win:{t:acme}:3600:*")
    assert await redis.hexists(hour, "tenant")


async def test_a_tenant_over_several_calls_counts_each_event_once(redis: Redis) -> None:
    # More events of one tenant than one Lua call takes: the batch goes out in chunks, and
    # ids seen in an earlier batch, spread over every chunk, are still dropped.
    from detector.windows.counters import MAX_EVENTS_PER_CALL

    table = PriceTable.load()
    store = WindowStore(redis, dedup_horizon_s=3600)
    now_ms = time.time_ns() // 1_000_000
    n = MAX_EVENTS_PER_CALL * 2 + 500
    events = [
        priced(table, event_id=f"e{i}", ts_ms=now_ms, user_id=f"u{i % 700}", cost_usd=0.001 * i)
        for i in range(n)
    ]
    earlier = events[::8]
    first = await store.apply_batch(earlier, now_ms)
    assert len(first.applied) == len(earlier)

    result = await store.apply_batch(events, now_ms)
    assert len(result.applied) == n - len(earlier)
    assert len(result.duplicates) == len(earlier)

    [tenant, user] = await store.read_windows(
        [("acme", Scope.tenant, "acme", "1h"), ("acme", Scope.user, "u7", "1h")], now_ms
    )
    expected_micros = sum(round(1000 * i) for i in range(n))
    assert round(tenant["cost_usd"] * 1_000_000) == expected_micros
    assert tenant["requests"] == n
    assert user["requests"] == len(range(7, n, 700))


class _StopsBeforeForwarding(WindowStore):
    """A worker that dies right after the tenants' calls, before the global scope gets its share."""

    async def _forward(
        self, outboxes: dict[str, list[bytes]], count_asks: list[list[str]]
    ) -> list[int]:
        raise ConnectionError("killed before forwarding")


async def test_global_share_forwarded_exactly_once_after_a_stop(redis: Redis) -> None:
    # The global scope lives in its own Redis Cluster slot, so each tenant's call leaves its
    # share in the tenant's outbox and a second call adds it: a worker that stops in between
    # leaves it there, and whoever forwards it later (a sweep, the tenant's next batch, twice
    # over) adds it once.
    table = PriceTable.load()
    now_ms = time.time_ns() // 1_000_000
    first = [
        priced(table, tenant_id=f"t{i % 3}", event_id=f"a{i}", ts_ms=now_ms, cost_usd=0.25)
        for i in range(9)
    ]
    try:
        await _StopsBeforeForwarding(redis, dedup_horizon_s=3600).apply_batch(first, now_ms)
    except ConnectionError:
        pass
    store = WindowStore(redis, dedup_horizon_s=3600)
    read = [("_global", Scope.global_, "all", "1h"), ("t0", Scope.tenant, "t0", "1h")]
    glob, tenant = await store.read_windows(read, now_ms)
    assert glob["cost_usd"] == 0.0  # not forwarded yet
    assert tenant["cost_usd"] == 0.75  # the tenant's own windows are counted

    # The redelivered batch is all duplicates, yet its tenants' leftovers go out with it.
    again = await store.apply_batch(first, now_ms)
    assert again.applied == [] and len(again.duplicates) == 9
    [glob, _] = await store.read_windows(read, now_ms)
    assert glob["cost_usd"] == 2.25

    # Forwarding again (a sweep by another worker) adds nothing more.
    await WindowStore(redis, dedup_horizon_s=3600).forward_pending()
    await store.forward_pending()
    more = [priced(table, tenant_id="t1", event_id="b1", ts_ms=now_ms, cost_usd=1.0)]
    await store.apply_batch(more, now_ms)
    [glob, _] = await store.read_windows(read, now_ms)
    assert glob["cost_usd"] == 3.25
    assert glob["requests"] == 10


async def test_sweep_forwards_the_outbox_of_a_tenant_that_went_quiet(redis: Redis) -> None:
    table = PriceTable.load()
    now_ms = time.time_ns() // 1_000_000
    batch = [priced(table, tenant_id="quiet", event_id="q1", ts_ms=now_ms, cost_usd=0.5)]
    try:
        await _StopsBeforeForwarding(redis, dedup_horizon_s=3600).apply_batch(batch, now_ms)
    except ConnectionError:
        pass
    store = WindowStore(redis, dedup_horizon_s=3600)
    # The periodic sweep reads only tenants forwarded from before; this one never was, so it
    # takes the scan a worker makes at start.
    assert await store.forward_pending() == 0
    assert await store.forward_pending(full_scan=True) == 1
    [glob] = await store.read_windows([("_global", Scope.global_, "all", "5m")], now_ms)
    assert glob["cost_usd"] == 0.5
    assert await redis.llen("det:gout:{t:quiet}") == 0  # trimmed once forwarded
    assert await store.forward_pending(full_scan=True) == 0

    # Known now: a later leftover of the same tenant is found without a scan.
    batch = [priced(table, tenant_id="quiet", event_id="q2", ts_ms=now_ms, cost_usd=0.25)]
    try:
        await _StopsBeforeForwarding(redis, dedup_horizon_s=3600).apply_batch(batch, now_ms)
    except ConnectionError:
        pass
    assert await store.forward_pending() == 1
    [glob] = await store.read_windows([("_global", Scope.global_, "all", "5m")], now_ms)
    assert glob["cost_usd"] == 0.75
