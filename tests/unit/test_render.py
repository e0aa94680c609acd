from __future__ import annotations

from datetime import date

import orjson

from detector.reports.model import Column, Report
from detector.reports.periods import PeriodKind, day_ms, period_at
from detector.reports.render import render

PERIOD = period_at(PeriodKind.week, day_ms(date(2026, 11, 10)), day_ms(date(2026, 11, 18)))


def report() -> Report:
    return Report(
        name="cost-by-feature",
        title="Cost per feature",
        tenant_id="acme",
        period=PERIOD,
        columns=(
            Column("feature", "feature", "text"),
            Column("cost_usd", "cost $", "usd"),
            Column("delta_pct", "change %", "pct"),
            Column("requests", "requests", "int"),
        ),
        rows=[
            {"feature": "chat", "cost_usd": 1234.5, "delta_pct": 12.345, "requests": 12000},
            {"feature": "a,b", "cost_usd": 0.0123, "delta_pct": None, "requests": 3},
        ],
        totals={"cost_usd": 1234.5123, "requests": 12003},
        notes=["a note"],
    )


def test_table() -> None:
    assert render(report(), "table").splitlines() == [
        "Cost per feature: tenant acme, week 2026-W46 (2026-11-09 to 2026-11-15)",
        "feature      cost $  change %  requests",
        "-------  ----------  --------  --------",
        "chat     1,234.5000     +12.3    12,000",
        "a,b          0.0123         -         3",
        "totals: cost_usd=1,234.51, requests=12,003",
        "note: a note",
    ]


def test_csv_and_json_carry_the_raw_values() -> None:
    assert render(report(), "csv").splitlines() == [
        "feature,cost_usd,delta_pct,requests",
        "chat,1234.5,12.345,12000",
        '"a,b",0.0123,,3',
    ]
    body = orjson.loads(render(report(), "json"))
    assert body["period"] == {
        "kind": "week", "start": "2026-11-09", "through": "2026-11-15", "days": 7,
        "complete": True,
    }  # fmt: skip
    assert body["rows"][1] == {"feature": "a,b", "cost_usd": 0.0123, "delta_pct": None,
                               "requests": 3}  # fmt: skip
