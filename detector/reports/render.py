"""A report as a text table, JSON or CSV (pure)."""

from __future__ import annotations

import csv
import io

import orjson

from detector.reports.model import Cell, Column, Report

FORMATS = ("table", "json", "csv")


def render(report: Report, output_format: str) -> str:
    if output_format == "json":
        return orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode()
    if output_format == "csv":
        return render_csv(report)
    return render_table(report)


def usd_decimals(values: list[Cell]) -> int:
    """Cents when every amount of a column is at least a dollar, else hundredths of a cent.

    >>> usd_decimals([12.5, 0, None]), usd_decimals([12.5, 0.0123])
    (2, 4)
    """
    small = [v for v in values if isinstance(v, int | float) and 0 < abs(v) < 1]
    return 4 if small else 2


def cell_text(column: Column, value: Cell, decimals: int = 2) -> str:
    """One value as the table shows it.

    >>> usd = Column("delta_usd", "", "usd")
    >>> cell_text(usd, 12.5), cell_text(usd, 0.0123, 4)
    ('+12.50', '+0.0123')
    >>> cell_text(Column("n", "", "int"), 12345), cell_text(Column("n", "", "int"), None)
    ('12,345', '-')
    """
    if value is None:
        return "-"
    signed = "+" if column.key.startswith("delta") else ""
    if isinstance(value, str) or column.kind == "text":
        return str(value)
    if column.kind == "usd":
        return f"{value:{signed},.{decimals}f}"
    if column.kind == "pct":
        return f"{value:{signed}.1f}"
    if column.kind == "ratio":
        return f"{value:.4f}"
    return f"{value:{signed},}"


def render_table(report: Report) -> str:
    scope = f"tenant {report.tenant_id}" if report.tenant_id else "all tenants"
    lines = [f"{report.title}: {scope}, {report.period.label()}"]
    if report.compared_with is not None:
        lines.append(f"compared with {report.compared_with.label()}")
    columns = report.columns
    grid = [[c.label for c in columns]]
    decimals = [usd_decimals([row.get(c.key) for row in report.rows]) for c in columns]
    grid += [
        [cell_text(c, row.get(c.key), d) for c, d in zip(columns, decimals, strict=True)]
        for row in report.rows
    ]
    widths = [max(len(r[i]) for r in grid) for i in range(len(columns))]
    for n, row in enumerate(grid):
        cells = [
            text.ljust(w) if c.kind == "text" else text.rjust(w)
            for c, text, w in zip(columns, row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if not report.rows:
        lines.append("(no spend in this period)")
    if report.totals:
        kinds = {c.key: c for c in columns}
        parts = []
        for key, value in report.totals.items():
            column = kinds.get(key, Column(key, key, "int" if isinstance(value, int) else "ratio"))
            parts.append(f"{key}={cell_text(column, value, usd_decimals([value]))}")
        lines.append("totals: " + ", ".join(parts))
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in report.columns])
    for row in report.rows:
        writer.writerow(["" if row.get(c.key) is None else row.get(c.key) for c in report.columns])
    return out.getvalue()
