"""Calendar windows and budgets of a tenant with a time zone start at its local midnight."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
from redis.asyncio import Redis

from detector.config import Settings
from detector.pipeline import Deps, handle_batch
from detector.pricing import PriceTable, price_event
from detector.rules.loader import parse_rules
from detector.schemas import Decision, Scope, UsageEvent
from detector.windows.buckets import calendar_end_ms
from detector.windows.counters import PricedEvent, WindowStore

from .conftest import event_bytes, serve_api

RULES = parse_rules("time_zones: {tokyo-co: Asia/Tokyo, ny-co: America/New_York}", "rules.yaml")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def event(event_id: str, tenant: str, at: str, cost: float) -> PricedEvent:
    ev = UsageEvent.model_validate(
        {
            "event_id": event_id,
            "ts_ms": ms(at),
            "tenant_id": tenant,
            "user_id": "u1",
            "model": "gpt-4o",
            "cost_usd": cost,
        }
    )
    return PricedEvent(ev, price_event(ev, PriceTable.load()))


async def test_local_calendar_windows(redis: Redis) -> None:
    store = WindowStore(redis, dedup_horizon_s=86400 * 40)
    now = ms("2026-01-04T01:00:00")  # 10:00 on Sunday 4 January in Tokyo
    events = []
    for tenant in ("tokyo-co", "utc-co"):
        events += [
            # 31 Dec 20:00 UTC is 1 Jan 05:00 in Tokyo: this month there, last month in UTC.
            event(f"{tenant}-a", tenant, "2025-12-31T20:00:00", 1.0),
            # 3 Jan 16:00 UTC is 4 Jan 01:00 in Tokyo: today there, yesterday in UTC.
            event(f"{tenant}-b", tenant, "2026-01-03T16:00:00", 10.0),
            event(f"{tenant}-c", tenant, "2026-01-04T00:30:00", 100.0),
        ]
    await store.apply_batch(events, now, zones=RULES.zone)

    async def read(tenant: str, scope: Scope, entity: str, window: str) -> float:
        [sums] = await store.read_windows([(tenant, scope, entity, window)], now, RULES.zone)
        return sums["cost_usd"]

    assert await read("tokyo-co", Scope.tenant, "tokyo-co", "today") == 110.0
    assert await read("utc-co", Scope.tenant, "utc-co", "today") == 100.0
    assert await read("tokyo-co", Scope.user, "u1", "month") == 111.0
    assert await read("utc-co", Scope.user, "u1", "month") == 110.0
    # ISO week: Tokyo's started Monday 29 Dec local, UTC's Monday 29 Dec UTC; both hold all.
    assert await read("tokyo-co", Scope.tenant, "tokyo-co", "week") == 111.0
    # Sliding windows and the global scope do not depend on zones.
    assert await read("tokyo-co", Scope.tenant, "tokyo-co", "1d") == 110.0
    [glob] = await store.read_windows([("_global", Scope.global_, "all", "today")], now, RULES.zone)
    assert glob["cost_usd"] == 200.0


def test_budget_period_ends_at_local_midnight_across_dst() -> None:
    ny = ZoneInfo("America/New_York")
    # 8 March 2026 is the spring-forward day in New York: that local day has 23 hours.
    noon = ms("2026-03-08T16:00:00")
    assert RULES.zone("ny-co") == ny
    end = calendar_end_ms("today", noon, RULES.zone("ny-co"))
    assert end == ms("2026-03-09T04:00:00")  # midnight EDT (UTC-4)
    start_of_day = ms("2026-03-08T05:00:00")  # midnight EST (UTC-5)
    assert end - start_of_day == 23 * 3600 * 1000
    assert calendar_end_ms("month", noon, ny) == ms("2026-04-01T04:00:00")
    assert calendar_end_ms("month", noon) == ms("2026-04-01T00:00:00")
    assert RULES.zone("someone-else") is None


async def test_daily_budget_follows_the_local_day(
    pipeline_deps_factory: Callable[[str], Deps],
) -> None:
    now = time.time_ns() // 1_000_000
    utc_hour = datetime.fromtimestamp(now / 1000, tz=UTC).hour
    offset = 12 - utc_hour  # a zone where it is about noon now: local midnight is hours away
    zone_name = f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"  # POSIX signs are inverted
    deps = pipeline_deps_factory(
        f"time_zones: {{zoned: {zone_name}}}\n"
        "budgets: [{id: daily, scope: tenant, period: day, amount_usd: 10, alert_at: [1.0],"
        " action: block}]\n"
    )
    zone = ZoneInfo(zone_name)
    midnight = calendar_end_ms("today", now, zone) - 86_400_000
    n = 0

    async def spend(ts_ms: int, usd: float) -> list[Decision]:
        nonlocal n
        n += 1
        body = event_bytes(
            event_id=f"z{n}", ts=ts_ms, tenant_id="zoned", model="gpt-4o", cost_usd=usd
        )
        return (await handle_batch([(b"zoned", body)], deps, now)).decisions

    # $6 just before local midnight and $6 after it: two local days, neither over $10.
    assert await spend(midnight - 60_000, 6.0) == []
    assert await spend(midnight + 60_000, 6.0) == []
    [decision] = await spend(now, 5.0)  # today's local spend reaches $11
    assert decision.action == "block"
    assert decision.until_ms == calendar_end_ms("today", now, zone)


async def test_spend_api_reads_in_the_tenant_zone(
    redis: Redis, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    rules = tmp_path / "zoned-rules.yaml"
    rules.write_text("time_zones: {tokyo-co: Asia/Tokyo}\n")
    settings = settings_factory(rules=rules)
    store = WindowStore(redis, dedup_horizon_s=3600)
    now = time.time_ns() // 1_000_000
    await store.apply_batch([event("x", "tokyo-co", _iso(now), 2.5)], now, zones=RULES.zone)
    async with serve_api(settings, redis) as base, aiohttp.ClientSession() as http:
        params = {"scope": "tenant", "tenant_id": "tokyo-co", "window": "today"}
        async with http.get(f"{base}/v1/spend", params=params) as r:
            body = await r.json()
        assert body["time_zone"] == "Asia/Tokyo" and body["metrics"]["cost_usd"] == 2.5
        rules.write_text("time_zones: {tokyo-co: Not/AZone}\n")  # broken before first load
    broken = settings_factory(rules=rules)
    async with serve_api(broken, None) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/spend", params=params) as r:
            assert r.status == 503
            assert "unknown time zone 'Not/AZone'" in (await r.json())["error"]


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).replace(tzinfo=None).isoformat()
