"""The reports by name, the checks on a request for one, and running it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from detector.reports import attribution, deltas, economics
from detector.reports.model import Query, Report
from detector.reports.periods import resolve_period
from detector.reports.plans import Plans
from detector.reports.reads import RollupReader
from detector.schemas import TENANT_PATTERN

Builder = Callable[[Query, RollupReader, Plans | None], Awaitable[Report]]


def _plain(
    build: Callable[[Query, RollupReader], Awaitable[Report]],
) -> Builder:
    async def run(query: Query, reader: RollupReader, plans: Plans | None) -> Report:
        return await build(query, reader)

    return run


REPORTS: dict[str, Builder] = {
    "cost-per-user": _plain(attribution.cost_per_user),
    "cost-by-feature": _plain(attribution.cost_by_feature),
    "cost-by-model": _plain(attribution.cost_by_model),
    "top-spenders": _plain(attribution.top_spenders),
    "week-over-week": _plain(deltas.week_over_week),
    "margins": economics.margins,
    "quality": _plain(economics.quality),
}
DEFAULT_PERIOD = {"margins": "month"}  # every other report: week
DEFAULT_TOP = 10
MAX_TOP = 100
_TENANT_RE = re.compile(TENANT_PATTERN)


def parse_query(
    name: str, tenant: str | None, period: str | None, at: str | None, top: str | None,
    now_ms: int,
) -> Query:  # fmt: skip
    """Check a request for a report; the ValueError's message names the parameter at fault.

    >>> parse_query("top-spenders", None, "day", "2026-11-18", "5", 1_795_000_000_000).top
    5
    >>> parse_query("spend", None, None, None, None, 0)
    Traceback (most recent call last):
    ...
    ValueError: report must be one of cost-per-user, cost-by-feature, cost-by-model, \
top-spenders, week-over-week, margins, quality, got 'spend'
    """
    if name not in REPORTS:
        raise ValueError(f"report must be one of {', '.join(REPORTS)}, got {name[:40]!r}")
    if tenant is not None and tenant != "" and not _TENANT_RE.fullmatch(tenant):
        raise ValueError("tenant_id must be 1-128 characters of A-Z a-z 0-9 . _ : @ / + = -")
    top_n = DEFAULT_TOP
    if top is not None and top != "":
        if not (top.isascii() and top.isdigit() and 1 <= int(top) <= MAX_TOP):
            raise ValueError(f"top must be a whole number from 1 to {MAX_TOP}, got {top[:20]!r}")
        top_n = int(top)
    kind = period if period else DEFAULT_PERIOD.get(name, "week")
    return Query(name, tenant or None, resolve_period(kind, at, now_ms), top_n, now_ms)


async def build_report(query: Query, reader: RollupReader, plans: Plans | None) -> Report:
    """Run one report; a ValueError means the request cannot be answered (e.g. no plans)."""
    return await REPORTS[query.name](query, reader, plans)
