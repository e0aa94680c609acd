"""Report periods (pure): a UTC calendar day, ISO week or month, cut at today when current,
and the like-for-like period it is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from detector.windows.buckets import BUCKET_SIZES, DAY_S, bucket_start_ms, calendar_start_ms

DAY_MS = DAY_S * 1000
# Daily roll-ups (day buckets and rank sets) are kept this long after their day.
ROLLUP_RETENTION_DAYS = next(b.retention_s for b in BUCKET_SIZES if b.size_s == DAY_S) // DAY_S


class PeriodKind(StrEnum):
    day = "day"
    week = "week"
    month = "month"


# The calendar window of detector.windows that sums one period's day buckets up to a day.
CALENDAR_WINDOW = {PeriodKind.day: "today", PeriodKind.week: "week", PeriodKind.month: "month"}


@dataclass(frozen=True, slots=True)
class Period:
    """Days [start_ms, through_ms] of one calendar period (through_ms is a day start).

    A current period stops at today, so it covers fewer days than its calendar length.
    """

    kind: PeriodKind
    start_ms: int
    end_ms: int  # the calendar end (exclusive), for projections
    through_ms: int
    complete: bool  # every day of the calendar period is in, and the period is over

    @property
    def days(self) -> list[int]:
        return list(range(self.start_ms, self.through_ms + 1, DAY_MS))

    @property
    def calendar_days(self) -> int:
        return (self.end_ms - self.start_ms) // DAY_MS

    def label(self) -> str:
        """Human name of the period.

        >>> at, now = day_ms(date(2026, 11, 18)), day_ms(date(2026, 12, 3))
        >>> period_at(PeriodKind.week, at, now).label()
        'week 2026-W47 (2026-11-16 to 2026-11-22)'
        """
        first = _date(self.start_ms)
        last = _date(self.through_ms)
        if self.kind is PeriodKind.day:
            return f"day {first}" + ("" if self.complete else " (so far)")
        if self.kind is PeriodKind.week:
            iso = first.isocalendar()
            name = f"week {iso.year}-W{iso.week:02d}"
        else:
            name = f"month {first:%Y-%m}"
        part = "" if self.complete else f", {len(self.days)} of {self.calendar_days} days"
        return f"{name} ({first} to {last}{part})"

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "start": str(_date(self.start_ms)),
            "through": str(_date(self.through_ms)),
            "days": len(self.days),
            "complete": self.complete,
        }


def day_ms(day: date) -> int:
    """Epoch ms of a date's UTC midnight.

    >>> day_ms(date(1970, 1, 2))
    86400000
    """
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


def _date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def _calendar_end_ms(kind: PeriodKind, start_ms: int) -> int:
    first = _date(start_ms)
    if kind is PeriodKind.day:
        return start_ms + DAY_MS
    if kind is PeriodKind.week:
        return start_ms + 7 * DAY_MS
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return day_ms(nxt)


def period_at(kind: PeriodKind, at_ms: int, now_ms: int) -> Period:
    """The period of `kind` that holds at_ms, cut at the day of now_ms.

    >>> p = period_at(PeriodKind.month, day_ms(date(2026, 11, 3)), day_ms(date(2026, 11, 18)))
    >>> len(p.days), p.calendar_days, p.complete
    (18, 30, False)
    """
    start = calendar_start_ms(CALENDAR_WINDOW[kind], at_ms)
    end = _calendar_end_ms(kind, start)
    through = min(end - DAY_MS, bucket_start_ms(now_ms, DAY_S))
    if through < start:
        raise ValueError("the period has not started yet")
    return Period(kind, start, end, through, complete=now_ms >= end)


def previous(period: Period) -> Period:
    """The like-for-like period before: the same weekday a week earlier for a day, the week
    before for a week, the month before for a month, with as many days as `period` has (so a
    week to Wednesday is compared with last week to Wednesday).

    >>> p = period_at(PeriodKind.month, day_ms(date(2026, 3, 31)), day_ms(date(2026, 4, 1)))
    >>> q = previous(p)
    >>> str(_date(q.start_ms)), str(_date(q.through_ms))
    ('2026-02-01', '2026-02-28')
    """
    n_days = len(period.days)
    if period.kind is PeriodKind.month:
        start = day_ms((_date(period.start_ms) - timedelta(days=1)).replace(day=1))
    else:
        start = period.start_ms - 7 * DAY_MS
    end = _calendar_end_ms(period.kind, start)
    through = min(start + (n_days - 1) * DAY_MS, end - DAY_MS)
    return Period(period.kind, start, end, through, complete=through == end - DAY_MS)


def parse_date_ms(text: str) -> int:
    """UTC midnight of a YYYY-MM-DD date.

    >>> parse_date_ms("2026-11-18")
    1794960000000
    """
    if len(text) != 10:
        raise ValueError(f"expected a date as YYYY-MM-DD, got {text[:40]!r}")
    try:
        return day_ms(date.fromisoformat(text))
    except ValueError:
        raise ValueError(f"expected a date as YYYY-MM-DD, got {text[:40]!r}") from None


def resolve_period(kind_text: str, at_text: str | None, now_ms: int) -> Period:
    """Parse and check a requested period (a kind and any date in it, default today); the
    message of the ValueError names the parameter.

    >>> resolve_period("week", "2026-11-10", day_ms(date(2026, 11, 18))).label()
    'week 2026-W46 (2026-11-09 to 2026-11-15)'
    """
    try:
        kind = PeriodKind(kind_text)
    except ValueError:
        raise ValueError(f"period must be day, week or month, got {kind_text[:40]!r}") from None
    today_ms = bucket_start_ms(now_ms, DAY_S)
    if at_text is None or at_text == "":
        at_ms = today_ms
    else:
        try:
            at_ms = parse_date_ms(at_text)
        except ValueError as exc:
            raise ValueError(f"at: {exc}") from None
    if at_ms > today_ms:
        raise ValueError(f"at: {at_text} is in the future (today is {_date(today_ms)})")
    period = period_at(kind, at_ms, now_ms)
    oldest_ms = today_ms - ROLLUP_RETENTION_DAYS * DAY_MS
    if period.start_ms < oldest_ms:
        raise ValueError(
            f"at: the {kind.value} of {_date(at_ms)} starts before {_date(oldest_ms)}; "
            f"daily roll-ups are kept {ROLLUP_RETENTION_DAYS} days"
        )
    return period
