from __future__ import annotations

from datetime import date

import pytest

from detector.reports.periods import PeriodKind, day_ms, period_at, previous, resolve_period

NOW = day_ms(date(2026, 11, 18)) + 15 * 3_600_000  # Wednesday 2026-11-18 15:00 UTC


def span(kind: str, at: str | None) -> tuple[str, str, int, bool]:
    p = resolve_period(kind, at, NOW)
    j = p.as_json()
    return str(j["start"]), str(j["through"]), int(str(j["days"])), bool(j["complete"])


def test_current_periods_stop_at_today() -> None:
    assert span("day", None) == ("2026-11-18", "2026-11-18", 1, False)
    assert span("week", None) == ("2026-11-16", "2026-11-18", 3, False)
    assert span("month", "2026-11-02") == ("2026-11-01", "2026-11-18", 18, False)


def test_finished_periods_are_whole() -> None:
    assert span("week", "2026-11-15") == ("2026-11-09", "2026-11-15", 7, True)
    assert span("month", "2026-10-31") == ("2026-10-01", "2026-10-31", 31, True)
    assert span("day", "2026-11-17") == ("2026-11-17", "2026-11-17", 1, True)


def test_previous_is_like_for_like() -> None:
    week = previous(resolve_period("week", None, NOW)).as_json()
    assert (week["start"], week["through"]) == ("2026-11-09", "2026-11-11")
    day = previous(resolve_period("day", None, NOW)).as_json()
    assert (day["start"], day["through"]) == ("2026-11-11", "2026-11-11")
    month = previous(resolve_period("month", None, NOW)).as_json()
    assert (month["start"], month["through"]) == ("2026-10-01", "2026-10-18")
    # 31 days of March against the 28 of February, and an ISO week across the new year
    march = period_at(PeriodKind.month, day_ms(date(2026, 3, 5)), day_ms(date(2026, 4, 2)))
    assert previous(march).as_json()["days"] == 28
    new_year = period_at(PeriodKind.week, day_ms(date(2027, 1, 1)), day_ms(date(2027, 1, 9)))
    assert new_year.label() == "week 2026-W53 (2026-12-28 to 2027-01-03)"


@pytest.mark.parametrize(
    ("kind", "at", "message"),
    [
        ("year", None, "period must be day, week or month, got 'year'"),
        ("day", "2026-11-19", "at: 2026-11-19 is in the future (today is 2026-11-18)"),
        ("day", "18/11/2026", "at: expected a date as YYYY-MM-DD, got '18/11/2026'"),
        ("day", "2026-11-31", "at: expected a date as YYYY-MM-DD, got '2026-11-31'"),
        (
            "month",
            "2026-09-10",
            "at: the month of 2026-09-10 starts before 2026-09-09; daily roll-ups are kept 70 days",
        ),
    ],
)
def test_bad_periods_name_the_parameter(kind: str, at: str | None, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        resolve_period(kind, at, NOW)
    assert str(exc.value) == message
