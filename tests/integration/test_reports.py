"""Every report, to the cent, against answers computed from the generated events themselves.

The events go through the worker's pipeline (`handle_batch`) into the real Redis; the expected
figures come from the event list with plain arithmetic on the published per-token prices."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from detector.pipeline import Deps, handle_batch
from detector.reports import reads
from detector.reports.catalog import REPORTS, build_report, parse_query
from detector.reports.plans import parse_plans
from detector.reports.reads import RollupReader
from detector.windows.counters import WindowStore

from .report_events import (
    MODELS,
    TENANTS,
    Expected,
    before,
    calendar,
    cost_by,
    generate,
    raw,
    select,
)

PLANS = """
unprofitable_share: 0.8
plans:
  enterprise: {revenue_usd: 100, per: tenant}
  team: {revenue_usd: 0.5, per: user}
tenants:
  acme: enterprise
  globex: team
"""
CENT = 0.005


def near(got: Any, want: float, tolerance: float = CENT) -> bool:
    return isinstance(got, int | float) and abs(got - want) < tolerance


async def load(deps: Deps, events: list[Expected], now_ms: int) -> None:
    messages = raw(events)
    for i in range(0, len(messages), 500):
        result = await handle_batch(messages[i : i + 500], deps, now_ms)
        assert not result.dead_letters, result.dead_letters[:1]


class Reports:
    def __init__(self, redis: Redis, now_ms: int) -> None:
        self.reader = RollupReader(redis, WindowStore(redis, 3600))
        self.now_ms = now_ms
        self.plans = parse_plans(PLANS, "plans.yaml")

    async def __call__(
        self, name: str, tenant: str | None, period: str, at: date, top: int = 10
    ) -> dict[str, Any]:
        query = parse_query(name, tenant, period, str(at), str(top), self.now_ms)
        return (await build_report(query, self.reader, self.plans)).as_json()


@pytest.fixture
async def world(
    redis: Redis, pipeline_deps_factory: Callable[[str], Deps]
) -> tuple[Reports, list[Expected], date]:
    now_ms = time.time_ns() // 1_000_000
    events = generate(now_ms, 3000, days_back=45, seed=11)
    await load(pipeline_deps_factory("rules: []\n"), events, now_ms)
    today = datetime.fromtimestamp(now_ms / 1000, tz=UTC).date()
    return Reports(redis, now_ms), events, today


def rows_by(body: dict[str, Any], *keys: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(row[k] for k in keys): row for row in body["rows"]}


async def test_cost_per_active_user(world: tuple[Reports, list[Expected], date]) -> None:
    report, events, today = world
    for tenant, period, at in ((None, "week", today), ("acme", "month", today - timedelta(35))):
        days = calendar(period, at, today)
        picked = select(events, days, tenant)
        body = await report("cost-per-user", tenant, period, at)
        rows = rows_by(body, "tenant_id")
        assert set(rows) == {(t,) for t in ([tenant] if tenant else TENANTS)}
        for (t,), row in rows.items():
            mine = [e for e in picked if e.get("tenant_id") == t]
            users = {e.get("user_id") for e in mine} - {None}
            cost = sum(e.cost for e in mine)
            assert near(row["cost_usd"], cost)
            assert row["requests"] == len(mine)
            assert row["active_users"] == len(users)
            assert near(row["cost_per_active_user_usd"], cost / len(users))
        all_users = {(e.get("tenant_id"), e.get("user_id")) for e in picked if e.get("user_id")}
        assert body["totals"]["active_users"] == len(all_users)
        assert near(body["totals"]["cost_usd"], sum(e.cost for e in picked))


async def test_cost_per_feature_and_by_model(world: tuple[Reports, list[Expected], date]) -> None:
    report, events, today = world
    days = calendar("month", today, today)
    picked = select(events, days, "acme")
    body = await report("cost-by-feature", "acme", "month", today)
    rows = rows_by(body, "feature")
    total = sum(e.cost for e in picked)
    for feature in ("chat", "search", "summarize", None):
        mine = [e for e in picked if e.get("feature") == feature]
        row = rows[(feature or "(no feature)",)]
        assert near(row["cost_usd"], sum(e.cost for e in mine))
        assert row["requests"] == len(mine)
        assert near(row["share_pct"], 100 * sum(e.cost for e in mine) / total, 0.01)
        assert near(row["output_cost_usd"], sum(e.output_cost for e in mine))
    costs = [row["cost_usd"] for row in body["rows"]]
    assert costs == sorted(costs, reverse=True)

    last_week = today - timedelta(days=7)
    picked = select(events, calendar("week", last_week, today), None)
    body = await report("cost-by-model", None, "week", last_week)
    assert body["period"]["complete"] is True and body["period"]["days"] == 7
    rows = rows_by(body, "model")
    assert set(rows) == {(m,) for m in MODELS}
    for (model,), row in rows.items():
        mine = [e for e in picked if e.get("model") == model]
        assert near(row["cost_usd"], sum(e.cost for e in mine))
        assert near(row["input_cost_usd"], sum(e.input_cost for e in mine))
        assert near(row["output_cost_usd"], sum(e.output_cost for e in mine))
        assert row["input_tokens"] == sum(e.get("input_tokens") for e in mine)
        assert row["output_tokens"] == sum(e.get("output_tokens") for e in mine)
        assert row["cached_input_tokens"] == sum(e.get("cached_input_tokens") for e in mine)
        assert row["requests"] == len(mine)


async def test_top_spenders(world: tuple[Reports, list[Expected], date]) -> None:
    report, events, today = world
    picked = select(events, calendar("month", today, today), None)
    body = await report("top-spenders", None, "month", today, top=3)
    fields = {"tenant": "tenant_id", "user": "user_id", "api_key": "api_key_id",
              "session": "session_id"}  # fmt: skip
    for dimension, field in fields.items():
        want = cost_by(picked, "tenant_id", field)
        ranked = sorted(want.values(), reverse=True)[:3]
        got = [row for row in body["rows"] if row["dimension"] == dimension]
        assert [row["rank"] for row in got] == [1, 2, 3]
        for row, cost in zip(got, ranked, strict=True):
            assert near(row["cost_usd"], cost)
            assert near(row["cost_usd"], want[(row["tenant_id"], row["entity_id"])])


async def test_week_over_week(world: tuple[Reports, list[Expected], date]) -> None:
    report, events, today = world
    for tenant, kind in (("acme", "week"), (None, "day"), ("globex", "month")):
        now_days = calendar(kind, today, today)
        then_days = before(kind, now_days)
        body = await report("week-over-week", tenant, kind, today, top=5)
        assert body["compared_with"]["start"] == str(min(then_days))
        assert body["compared_with"]["days"] == len(then_days)
        now, then = select(events, now_days, tenant), select(events, then_days, tenant)
        [total] = [row for row in body["rows"] if row["dimension"] == "total"]
        assert near(total["cost_usd"], sum(e.cost for e in now))
        assert near(total["previous_usd"], sum(e.cost for e in then))
        fields = {"feature": "feature", "model": "model", "user": "user_id",
                  "api_key": "api_key_id"}  # fmt: skip
        if tenant is None:
            fields["tenant"] = "tenant_id"
        else:
            assert not [row for row in body["rows"] if row["dimension"] == "tenant"]
        for dimension, field in fields.items():
            by_name = dimension in ("feature", "model", "tenant")
            keys = (field,) if by_name else ("tenant_id", field)
            a, b = cost_by(now, *keys), cost_by(then, *keys)
            deltas = sorted((abs(a.get(k, 0) - b.get(k, 0)) for k in set(a) | set(b)),
                            reverse=True)  # fmt: skip
            got = [row for row in body["rows"] if row["dimension"] == dimension]
            assert len(got) == min(5, len(deltas))
            for row, biggest in zip(got, deltas, strict=False):
                key = (
                    (row["entity_id"],) if len(keys) == 1 else (row["tenant_id"], row["entity_id"])
                )
                assert near(row["cost_usd"], a.get(key, 0))
                assert near(row["previous_usd"], b.get(key, 0))
                assert near(abs(row["delta_usd"]), biggest)
                if b.get(key):
                    # micro-dollar rounding of a tiny base shows in its percentage
                    pct = 100 * (a.get(key, 0) - b[key]) / b[key]
                    assert near(row["delta_pct"], pct, max(0.05, abs(pct) * 1e-3))
                else:
                    assert row["delta_pct"] is None


async def test_margins_with_month_to_date_projection(
    world: tuple[Reports, list[Expected], date],
) -> None:
    report, events, today = world
    start = datetime(today.year, today.month, 1, tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    factor = (end - start).total_seconds() * 1000 / (report.now_ms - start.timestamp() * 1000)
    picked = select(events, calendar("month", today, today), None)
    body = await report("margins", None, "month", today, top=100)
    tenants = {row["tenant_id"]: row for row in body["rows"] if row["level"] == "tenant"}
    users = {(row["tenant_id"], row["user_id"]): row for row in body["rows"]
             if row["level"] == "user"}  # fmt: skip
    user_costs = cost_by(picked, "tenant_id", "user_id")
    flagged_users = 0
    for tenant in TENANTS:
        row = tenants[tenant]
        cost = sum(e.cost for e in picked if e.get("tenant_id") == tenant)
        active = [k for k in user_costs if k[0] == tenant]
        assert near(row["cost_usd"], cost)
        assert near(row["projected_cost_usd"], cost * factor, 0.01)
        if tenant == "initech":
            assert row["status"] == "no plan" and row["revenue_usd"] is None
            continue
        revenue = 100.0 if tenant == "acme" else 0.5 * len(active)
        assert near(row["revenue_usd"], revenue)
        assert near(row["margin_usd"], revenue - cost * factor, 0.01)
        assert row["status"] == ("unprofitable" if cost * factor > 0.8 * revenue else "ok")
        per_user = revenue / len(active) if tenant == "acme" else 0.5
        for key in active:
            projected = user_costs[key] * factor
            status = "unprofitable" if projected > 0.8 * per_user else "ok"
            flagged_users += status == "unprofitable"
            assert users[key]["status"] == status
            assert near(users[key]["margin_usd"], per_user - projected, 0.01)
    assert body["totals"]["unprofitable_users"] == flagged_users
    margins = [row["margin_usd"] for row in tenants.values() if row["margin_usd"] is not None]
    assert [row["tenant_id"] for row in body["rows"]][:2] == [
        t for t, _ in sorted(((t, r["margin_usd"]) for t, r in tenants.items()
                              if r["margin_usd"] is not None), key=lambda x: x[1])
    ]  # fmt: skip
    assert len(margins) == 2


async def test_dollars_per_quality_by_model(world: tuple[Reports, list[Expected], date]) -> None:
    report, events, today = world
    picked = select(events, calendar("month", today, today), None)
    body = await report("quality", None, "month", today)
    rated: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for e in picked:
        if e.quality is not None:
            sums = rated[e.get("model")]
            sums[0] += 1
            sums[1] += e.quality
            sums[2] += e.cost
    rows = rows_by(body, "model")
    assert set(rows) == {(m,) for m in rated}
    for model, (n, q, cost) in rated.items():
        row = rows[(model,)]
        assert row["rated_requests"] == n
        assert near(row["mean_quality"], q / n, 1e-4)
        assert near(row["cost_usd"], cost)
        assert near(row["usd_per_quality"], cost / q, 1e-5)
    ranking = [model for model, _ in sorted(rated.items(), key=lambda kv: kv[1][2] / kv[1][1])]
    assert [row["model"] for row in body["rows"]] == ranking


async def test_big_unions_read_page_by_page_give_the_same_reports(
    world: tuple[Reports, list[Expected], date], monkeypatch: pytest.MonkeyPatch
) -> None:
    report, _, today = world
    asks = [(name, period) for name in REPORTS for period in ("day", "week", "month")
            if name != "margins" or period == "month"]  # fmt: skip
    in_redis = [await report(name, None, period, today) for name, period in asks]
    monkeypatch.setattr(reads, "UNION_IN_REDIS_MAX", 0)
    monkeypatch.setattr(reads, "PAGE_ENTRIES", 7)
    paged = [await report(name, None, period, today) for name, period in asks]
    assert paged == in_redis
    assert sum(len(body["rows"]) for body in paged) > 100
