"""Cost attribution: cost per active user, per feature, by model and the top spenders, for one
tenant or all."""

from __future__ import annotations

from collections.abc import Sequence

from detector.keys import GLOBAL_TENANT
from detector.reports.model import Cell, Column, Query, Report, pct, per, usd
from detector.reports.periods import Period
from detector.reports.reads import Metrics, RollupReader
from detector.schemas import Scope

NO_FEATURE = "(no feature)"
ACTIVE_USERS_NOTE = (
    "active users: exact count of distinct user_id values with at least one event in the "
    "period (union of the daily sets, no estimate); calls without a user_id count in the cost "
    "but not as users"
)


async def tenants_of(query: Query, reader: RollupReader, period: Period | None = None) -> list[str]:
    """The one tenant asked for, or every tenant with traffic in the period."""
    if query.tenant_id is not None:
        return [query.tenant_id]
    return [tenant for tenant, _ in await reader.tenants(period or query.period)]


async def cost_per_user(query: Query, reader: RollupReader) -> Report:
    tenants = await tenants_of(query, reader)
    period = query.period
    metrics = await reader.metrics([(t, Scope.tenant, t) for t in tenants], period, query.now_ms)
    users = await reader.ranks([(t, "user") for t in tenants], period, top=0)
    rows: list[dict[str, Cell]] = []
    for tenant, m, rank in sorted(
        zip(tenants, metrics, users, strict=True), key=lambda x: (-x[1]["cost_usd"], x[0])
    ):
        rows.append(
            {
                "tenant_id": tenant,
                "cost_usd": usd(m["cost_usd"]),
                "requests": m["requests"],
                "active_users": rank.count,
                "cost_per_active_user_usd": per(m["cost_usd"], rank.count),
            }
        )
    cost = sum(m["cost_usd"] for m in metrics)
    active = sum(r.count for r in users)
    return Report(
        name=query.name,
        title="Cost per active user",
        tenant_id=query.tenant_id,
        period=period,
        columns=(
            Column("tenant_id", "tenant", "text"),
            Column("cost_usd", "cost $", "usd"),
            Column("requests", "requests", "int"),
            Column("active_users", "active users", "int"),
            Column("cost_per_active_user_usd", "$ per active user", "usd"),
        ),
        rows=rows,
        totals={
            "cost_usd": usd(cost),
            "requests": sum(m["requests"] for m in metrics),
            "active_users": active,
            "cost_per_active_user_usd": per(cost, active),
        },
        notes=[ACTIVE_USERS_NOTE],
    )


async def by_dimension(
    reader: RollupReader, tenants: Sequence[str], scope: Scope, period: Period, now_ms: int
) -> dict[str, Metrics]:
    """Metrics of every entity of `scope` over the tenants, summed by entity name."""
    ranks = await reader.ranks([(t, scope.value) for t in tenants], period)
    asks = [
        (t, scope, name) for t, rank in zip(tenants, ranks, strict=True) for name, _ in rank.costs
    ]
    out: dict[str, Metrics] = {}
    for (_, _, name), m in zip(asks, await reader.metrics(asks, period, now_ms), strict=True):
        total = out.setdefault(name, dict.fromkeys(m, 0))
        for metric, value in m.items():
            total[metric] += value
    return out


async def _totals(query: Query, reader: RollupReader) -> Metrics:
    if query.tenant_id is None:
        asks = [(GLOBAL_TENANT, Scope.global_, "all")]
        [m] = await reader.metrics(asks, query.period, query.now_ms)
        return m
    [m] = await reader.metrics(
        [(query.tenant_id, Scope.tenant, query.tenant_id)], query.period, query.now_ms
    )
    return m


async def cost_by_feature(query: Query, reader: RollupReader) -> Report:
    tenants = await tenants_of(query, reader)
    features = await by_dimension(reader, tenants, Scope.feature, query.period, query.now_ms)
    total = await _totals(query, reader)
    rest = {k: total[k] - sum(m[k] for m in features.values()) for k in total}
    if rest["requests"] > 0:
        features[NO_FEATURE] = rest
    rows = [
        {
            "feature": name,
            "cost_usd": usd(m["cost_usd"]),
            "share_pct": pct(m["cost_usd"], total["cost_usd"]),
            "requests": m["requests"],
            "cost_per_request_usd": per(m["cost_usd"], m["requests"]),
            "input_cost_usd": usd(m["input_cost_usd"]),
            "output_cost_usd": usd(m["output_cost_usd"]),
        }
        for name, m in sorted(features.items(), key=lambda kv: (-kv[1]["cost_usd"], kv[0]))
    ]
    return Report(
        name=query.name,
        title="Cost per feature",
        tenant_id=query.tenant_id,
        period=query.period,
        columns=(
            Column("feature", "feature", "text"),
            Column("cost_usd", "cost $", "usd"),
            Column("share_pct", "share %", "pct"),
            Column("requests", "requests", "int"),
            Column("cost_per_request_usd", "$ per request", "usd"),
            Column("input_cost_usd", "input $", "usd"),
            Column("output_cost_usd", "output $", "usd"),
        ),
        rows=rows,
        totals={"cost_usd": usd(total["cost_usd"]), "requests": total["requests"]},
        notes=[f"{NO_FEATURE}: calls that named no feature"] if NO_FEATURE in features else [],
    )


async def cost_by_model(query: Query, reader: RollupReader) -> Report:
    tenants = await tenants_of(query, reader)
    models = await by_dimension(reader, tenants, Scope.model, query.period, query.now_ms)
    total = await _totals(query, reader)
    rows = [
        {
            "model": name,
            "cost_usd": usd(m["cost_usd"]),
            "share_pct": pct(m["cost_usd"], total["cost_usd"]),
            "input_cost_usd": usd(m["input_cost_usd"]),
            "output_cost_usd": usd(m["output_cost_usd"]),
            "input_tokens": m["input_tokens"],
            "output_tokens": m["output_tokens"],
            "cached_input_tokens": m["cached_input_tokens"],
            "requests": m["requests"],
        }
        for name, m in sorted(models.items(), key=lambda kv: (-kv[1]["cost_usd"], kv[0]))
    ]
    return Report(
        name=query.name,
        title="Cost by model (input vs output)",
        tenant_id=query.tenant_id,
        period=query.period,
        columns=(
            Column("model", "model", "text"),
            Column("cost_usd", "cost $", "usd"),
            Column("share_pct", "share %", "pct"),
            Column("input_cost_usd", "input $", "usd"),
            Column("output_cost_usd", "output $", "usd"),
            Column("input_tokens", "input tokens", "int"),
            Column("output_tokens", "output tokens", "int"),
            Column("cached_input_tokens", "cached tokens", "int"),
            Column("requests", "requests", "int"),
        ),
        rows=rows,
        totals={
            "cost_usd": usd(total["cost_usd"]),
            "input_cost_usd": usd(total["input_cost_usd"]),
            "output_cost_usd": usd(total["output_cost_usd"]),
            "requests": total["requests"],
        },
        notes=[
            "input $ = uncached input + cache reads + cache writes; output $ = output and "
            "reasoning tokens"
        ],
    )


TOP_SCOPES = ("user", "api_key", "session")


async def top_spenders(query: Query, reader: RollupReader) -> Report:
    period = query.period
    all_tenants = await reader.tenants(period)
    if query.tenant_id is None:
        tenants = [t for t, _ in all_tenants]
        total = sum(cost for _, cost in all_tenants)
    else:
        tenants = [query.tenant_id]
        total = dict(all_tenants).get(query.tenant_id, 0)
    rows: list[dict[str, Cell]] = []
    if query.tenant_id is None:
        for n, (tenant, cost) in enumerate(all_tenants[: query.top], start=1):
            rows.append(_top_row("tenant", n, tenant, tenant, cost, total))
    for scope in TOP_SCOPES:
        ranks = await reader.ranks([(t, scope) for t in tenants], period, top=query.top)
        merged = sorted(
            ((cost, tenant, entity) for tenant, r in zip(tenants, ranks, strict=True)
             for entity, cost in r.costs),
            key=lambda x: (-x[0], x[1], x[2]),
        )  # fmt: skip
        for n, (cost, tenant, entity) in enumerate(merged[: query.top], start=1):
            rows.append(_top_row(scope, n, tenant, entity, cost, total))
    return Report(
        name=query.name,
        title=f"Top {query.top} spenders",
        tenant_id=query.tenant_id,
        period=period,
        columns=(
            Column("dimension", "dimension", "text"),
            Column("rank", "#", "int"),
            Column("tenant_id", "tenant", "text"),
            Column("entity_id", "id", "text"),
            Column("cost_usd", "cost $", "usd"),
            Column("share_pct", "share %", "pct"),
        ),
        rows=rows,
        totals={"cost_usd": usd(total)},
        notes=["share %: of the total cost of the tenant (or of all tenants) in the period"],
    )


def _top_row(
    dimension: str, rank: int, tenant: str, entity: str, cost: int, total: int
) -> dict[str, Cell]:
    return {
        "dimension": dimension,
        "rank": rank,
        "tenant_id": tenant,
        "entity_id": entity,
        "cost_usd": usd(cost),
        "share_pct": pct(cost, total),
    }
