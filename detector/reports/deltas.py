"""Week-over-week (and month-over-month) changes in cost, in total and per dimension."""

from __future__ import annotations

from collections import defaultdict

from detector.reports.model import Cell, Column, Query, Report, pct, usd
from detector.reports.periods import previous
from detector.reports.reads import RollupReader

WOW_SCOPES = ("feature", "model", "user", "api_key")
# Features and models are summed by name across tenants; users and keys belong to one tenant.
_BY_NAME = {"feature", "model"}


async def week_over_week(query: Query, reader: RollupReader) -> Report:
    current, before = query.period, previous(query.period)
    now = dict(await reader.tenants(current))
    then = dict(await reader.tenants(before))
    if query.tenant_id is not None:
        now = {query.tenant_id: now.get(query.tenant_id, 0)}
        then = {query.tenant_id: then.get(query.tenant_id, 0)}
    rows = [_delta_row("total", None, "all", sum(now.values()), sum(then.values()))]
    if query.tenant_id is None:
        rows += _top_deltas("tenant", {(t, t): c for t, c in now.items()},
                            {(t, t): c for t, c in then.items()}, query.top)  # fmt: skip
    tenants = sorted(set(now) | set(then))
    for scope in WOW_SCOPES:
        sides = []
        for period in (current, before):
            ranks = await reader.ranks([(t, scope) for t in tenants], period)
            costs: dict[tuple[str | None, str], int] = defaultdict(int)
            for tenant, rank in zip(tenants, ranks, strict=True):
                owner = None if scope in _BY_NAME and query.tenant_id is None else tenant
                for entity, cost in rank.costs:
                    costs[(owner, entity)] += cost
            sides.append(costs)
        rows += _top_deltas(scope, sides[0], sides[1], query.top)
    return Report(
        name=query.name,
        title="Week-over-week" if current.kind.value != "month" else "Month-over-month",
        tenant_id=query.tenant_id,
        period=current,
        compared_with=before,
        columns=(
            Column("dimension", "dimension", "text"),
            Column("tenant_id", "tenant", "text"),
            Column("entity_id", "id", "text"),
            Column("cost_usd", "cost $", "usd"),
            Column("previous_usd", "before $", "usd"),
            Column("delta_usd", "change $", "usd"),
            Column("delta_pct", "change %", "pct"),
        ),
        rows=rows,
        totals={"cost_usd": usd(sum(now.values())), "previous_usd": usd(sum(then.values()))},
        notes=[
            f"compared with {before.label()}: a day with the same weekday a week before, a "
            "week with the week before, a month with the month before, over as many days",
            f"per dimension, the {query.top} largest changes in dollars (up or down); "
            "change % is empty when there was no cost before",
        ],
    )


def _top_deltas(
    dimension: str,
    now: dict[tuple[str | None, str], int],
    then: dict[tuple[str | None, str], int],
    top: int,
) -> list[dict[str, Cell]]:
    deltas = [(now.get(k, 0) - then.get(k, 0), k) for k in set(now) | set(then)]
    deltas.sort(key=lambda d: (-abs(d[0]), d[1][0] or "", d[1][1]))
    return [
        _delta_row(dimension, tenant, entity, now.get((tenant, entity), 0),
                   then.get((tenant, entity), 0))
        for _, (tenant, entity) in deltas[:top]
    ]  # fmt: skip


def _delta_row(
    dimension: str, tenant: str | None, entity: str, now: int, then: int
) -> dict[str, Cell]:
    return {
        "dimension": dimension,
        "tenant_id": tenant,
        "entity_id": entity,
        "cost_usd": usd(now),
        "previous_usd": usd(then),
        "delta_usd": usd(now - then),
        "delta_pct": pct(now - then, then),
    }
