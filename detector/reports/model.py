"""What a report is (pure): a period, columns, rows, totals and notes; money leaves the
integer micro-dollars here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from detector.reports.periods import Period

Cell = str | int | float | None
ColumnKind = Literal["text", "usd", "int", "pct", "ratio"]


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    kind: ColumnKind


@dataclass(frozen=True, slots=True)
class Query:
    """One request for a report: which, for which tenant (None: all), over which period."""

    name: str
    tenant_id: str | None
    period: Period
    top: int
    now_ms: int


@dataclass(slots=True)
class Report:
    name: str
    title: str
    tenant_id: str | None
    period: Period
    columns: tuple[Column, ...]
    rows: list[dict[str, Cell]] = field(default_factory=list)
    totals: dict[str, Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    compared_with: Period | None = None

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "report": self.name,
            "title": self.title,
            "tenant_id": self.tenant_id,
            "period": self.period.as_json(),
        }
        if self.compared_with is not None:
            body["compared_with"] = self.compared_with.as_json()
        body["columns"] = [{"key": c.key, "label": c.label, "kind": c.kind} for c in self.columns]
        body["rows"] = self.rows
        body["totals"] = self.totals
        body["notes"] = self.notes
        return body


def usd(micros: int) -> float:
    """Micro-dollars as dollars (exact to the micro-dollar).

    >>> usd(1_234_567)
    1.234567
    """
    return round(micros / 1_000_000, 6)


def per(numerator_micros: int, denominator: int) -> float | None:
    """Dollars per unit, None when there are no units.

    >>> per(3_000_000, 4), per(5, 0)
    (0.75, None)
    """
    return round(numerator_micros / 1_000_000 / denominator, 6) if denominator else None


def pct(part: int, whole: int) -> float | None:
    """part as a percentage of whole, None when whole is 0.

    >>> pct(1, 3), pct(1, 0)
    (33.33, None)
    """
    return round(100 * part / whole, 2) if whole else None
