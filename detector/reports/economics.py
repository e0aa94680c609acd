"""Unit economics: margin per tenant and per user against the plans file, with a month-to-date
projection, and dollars per unit of quality by model."""

from __future__ import annotations

from detector.reports.attribution import tenants_of
from detector.reports.model import Cell, Column, Query, Report, pct, usd
from detector.reports.periods import Period, PeriodKind
from detector.reports.plans import Plans
from detector.reports.reads import RollupReader


def projection_factor(period: Period, now_ms: int) -> float:
    """How much a month-to-date figure grows by the month's end at the same pace: calendar
    days over elapsed days (to the millisecond); 1 for a finished month.

    >>> day = 86_400_000
    >>> p = Period(PeriodKind.month, 0, 30 * day, 9 * day, complete=False)
    >>> projection_factor(p, 10 * day), projection_factor(p, 40 * day)
    (3.0, 1.0)
    """
    elapsed_ms = min(now_ms, period.end_ms) - period.start_ms
    if elapsed_ms >= period.end_ms - period.start_ms:
        return 1.0
    return (period.end_ms - period.start_ms) / max(elapsed_ms, 1)


def _status(projected: int, revenue: int, share: float) -> str:
    return "unprofitable" if projected > share * revenue else "ok"


async def margins(query: Query, reader: RollupReader, plans: Plans | None) -> Report:
    if plans is None:
        raise ValueError("report margins needs a plans file: set DETECTOR_PLANS_FILE")
    if query.period.kind is not PeriodKind.month:
        raise ValueError("report margins works on months: use period month")
    period = query.period
    factor = projection_factor(period, query.now_ms)
    tenants = await tenants_of(query, reader)
    tenant_costs = dict(await reader.tenants(period))
    users = await reader.ranks([(t, "user") for t in tenants], period)
    tenant_rows: list[dict[str, Cell]] = []
    user_rows: dict[str, list[dict[str, Cell]]] = {}
    flagged_tenants = flagged_users = 0
    share = plans.unprofitable_share
    for tenant, rank in zip(tenants, users, strict=True):
        cost = tenant_costs.get(tenant, 0)
        projected = round(cost * factor)
        found = plans.plan_of(tenant)
        row: dict[str, Cell] = {"level": "tenant", "tenant_id": tenant, "user_id": None}
        if found is None:
            row |= {"plan": None, "revenue_usd": None, "cost_usd": usd(cost),
                    "projected_cost_usd": usd(projected), "margin_usd": None,
                    "margin_pct": None, "status": "no plan"}  # fmt: skip
            tenant_rows.append(row)
            continue
        name, plan = found
        seats = rank.count if plan.per == "user" else 1
        revenue = plan.revenue_usd_micros * seats
        status = _status(projected, revenue, share)
        flagged_tenants += status != "ok"
        row |= {"plan": name, "revenue_usd": usd(revenue), "cost_usd": usd(cost),
                "projected_cost_usd": usd(projected), "margin_usd": usd(revenue - projected),
                "margin_pct": pct(revenue - projected, revenue), "status": status}  # fmt: skip
        tenant_rows.append(row)
        # A user's revenue: the plan's price per user, or an equal share of a tenant's price.
        if plan.per == "user":
            user_revenue = plan.revenue_usd_micros
        else:
            user_revenue = round(revenue / max(rank.count, 1))
        per_user = []
        for user, user_cost in rank.costs:
            user_projected = round(user_cost * factor)
            user_status = _status(user_projected, user_revenue, share)
            flagged_users += user_status != "ok"
            margin = user_revenue - user_projected
            per_user.append((margin, user, user_cost, user_projected, user_status))
        per_user.sort(key=lambda u: (u[0], u[1]))
        for margin, user, user_cost, user_projected, user_status in per_user[: query.top]:
            user_rows.setdefault(tenant, []).append(
                {"level": "user", "tenant_id": tenant, "user_id": user, "plan": name,
                 "revenue_usd": usd(user_revenue), "cost_usd": usd(user_cost),
                 "projected_cost_usd": usd(user_projected), "margin_usd": usd(margin),
                 "margin_pct": pct(margin, user_revenue), "status": user_status}
            )  # fmt: skip
    tenant_rows.sort(key=_worst_first)
    return Report(
        name=query.name,
        title="Margins (unit economics)",
        tenant_id=query.tenant_id,
        period=period,
        columns=(
            Column("level", "level", "text"),
            Column("tenant_id", "tenant", "text"),
            Column("user_id", "user", "text"),
            Column("plan", "plan", "text"),
            Column("revenue_usd", "revenue $", "usd"),
            Column("cost_usd", "cost $", "usd"),
            Column("projected_cost_usd", "projected $", "usd"),
            Column("margin_usd", "margin $", "usd"),
            Column("margin_pct", "margin %", "pct"),
            Column("status", "status", "text"),
        ),
        # each tenant's users follow the tenants, in the tenants' order (worst margin first)
        rows=tenant_rows + [u for t in tenant_rows for u in user_rows.get(str(t["tenant_id"]), [])],
        totals={
            "unprofitable_tenants": flagged_tenants,
            "unprofitable_users": flagged_users,
            "users": sum(r.count for r in users),
            "projection_factor": round(factor, 6),
        },
        notes=[
            f"unprofitable: projected month cost above {share:g} x revenue",
            "projected $: cost so far x calendar days / elapsed days (the cost itself for a "
            "finished month)",
            "a user's revenue is the plan's price per user, or the tenant's price shared "
            "equally by its active users; per-user plans count the users active so far",
            f"user rows: each tenant's {query.top} lowest margins",
        ],
    )


def _worst_first(row: dict[str, Cell]) -> tuple[bool, float, str]:
    margin = row["margin_usd"]
    return (margin is None, float(margin) if isinstance(margin, int | float) else 0.0,
            str(row["tenant_id"]))  # fmt: skip


def _best_first(row: dict[str, Cell]) -> tuple[bool, float, str]:
    value = row["usd_per_quality"]
    return (not isinstance(value, float), value if isinstance(value, float) else 0.0,
            str(row["model"]))  # fmt: skip


async def quality(query: Query, reader: RollupReader) -> Report:
    tenants = await tenants_of(query, reader)
    by_model = await reader.quality(tenants, query.period)
    rows: list[dict[str, Cell]] = []
    for model, (rated, quality_millionths, cost) in by_model.items():
        rows.append(
            {
                "model": model,
                "rated_requests": rated,
                "mean_quality": round(quality_millionths / 1_000_000 / rated, 4) if rated else None,
                "cost_usd": usd(cost),
                # micro-dollars over millionths of a point: dollars per quality point
                "usd_per_quality": round(cost / quality_millionths, 6)
                if quality_millionths
                else None,
                "cost_per_rated_request_usd": round(cost / 1_000_000 / rated, 6) if rated else None,
            }
        )
    rows.sort(key=_best_first)
    return Report(
        name=query.name,
        title="Dollars per quality by model",
        tenant_id=query.tenant_id,
        period=query.period,
        columns=(
            Column("model", "model", "text"),
            Column("rated_requests", "rated calls", "int"),
            Column("mean_quality", "mean quality", "ratio"),
            Column("cost_usd", "cost $", "usd"),
            Column("usd_per_quality", "$ per quality point", "ratio"),
            Column("cost_per_rated_request_usd", "$ per rated call", "ratio"),
        ),
        rows=rows,
        totals={"rated_requests": sum(r[0] for r in by_model.values())},
        notes=[
            "only calls whose tags.quality is a number in [0, 1] count",
            "$ per quality point = cost of the rated calls / sum of their quality; lower is "
            "better, best first",
        ],
    )
