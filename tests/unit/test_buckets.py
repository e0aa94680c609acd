from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.windows.buckets import (
    BUCKET_SIZES,
    CALENDAR_WINDOWS,
    DAY_S,
    HOUR_S,
    MAX_RETENTION_S,
    MINUTE_S,
    SLIDING_WINDOWS,
    WINDOW_LENGTH_S,
    WINDOWS,
    BucketSize,
    bucket_expiry_ms,
    bucket_start_ms,
    calendar_start_ms,
    parse_duration_s,
    window_buckets,
    writable_buckets,
)

DAY_MS = DAY_S * 1000
MAX_TS_MS = 253_402_300_799_999
timestamps = st.integers(min_value=0, max_value=MAX_TS_MS)
sizes_s = st.sampled_from([b.size_s for b in BUCKET_SIZES] + [1, 7, 90])


def ms(text: str) -> int:
    """Epoch ms of an ISO 8601 UTC text, e.g. '2024-03-01T00:00:00'."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


# --- bucket_start_ms ---------------------------------------------------------------------------


@given(timestamps, sizes_s)
def test_bucket_start_holds_ts_and_is_aligned(ts_ms: int, size_s: int) -> None:
    start = bucket_start_ms(ts_ms, size_s)
    assert start % (size_s * 1000) == 0
    assert start <= ts_ms < start + size_s * 1000


@given(timestamps, sizes_s)
def test_bucket_start_is_idempotent(ts_ms: int, size_s: int) -> None:
    start = bucket_start_ms(ts_ms, size_s)
    assert bucket_start_ms(start, size_s) == start


@given(timestamps, timestamps, sizes_s)
def test_bucket_start_is_monotonic(a_ms: int, b_ms: int, size_s: int) -> None:
    low, high = sorted((a_ms, b_ms))
    assert bucket_start_ms(low, size_s) <= bucket_start_ms(high, size_s)


@given(st.integers(min_value=-MAX_TS_MS, max_value=-1), sizes_s)
def test_bucket_start_before_epoch_rounds_down(ts_ms: int, size_s: int) -> None:
    start = bucket_start_ms(ts_ms, size_s)
    assert start <= ts_ms < start + size_s * 1000


def test_bucket_start_known_values() -> None:
    assert bucket_start_ms(61_500, 60) == 60_000
    assert bucket_start_ms(60_000, 60) == 60_000
    assert bucket_start_ms(59_999, 60) == 0
    assert bucket_start_ms(-1, 60) == -60_000


def test_bucket_expiry_is_end_plus_retention() -> None:
    assert bucket_expiry_ms(60_000, BucketSize(60, 7200)) == 60_000 + 7_260_000
    for size in BUCKET_SIZES:
        assert bucket_expiry_ms(0, size) == (size.size_s + size.retention_s) * 1000


def test_max_retention_is_the_day_bucket() -> None:
    assert MAX_RETENTION_S == DAY_S + 70 * DAY_S


# --- window_buckets: sliding -------------------------------------------------------------------


def test_windows_listed_in_order() -> None:
    assert WINDOWS == ("1m", "5m", "1h", "1d", "7d", "30d", "today", "week", "month")
    assert WINDOW_LENGTH_S == {
        "1m": 60,
        "5m": 300,
        "1h": 3600,
        "1d": 86400,
        "7d": 7 * 86400,
        "30d": 30 * 86400,
    }


@pytest.mark.parametrize(
    ("window", "size_s", "count"),
    [
        ("1m", MINUTE_S, 1),
        ("5m", MINUTE_S, 5),
        ("1h", 5 * MINUTE_S, 12),
        ("1d", HOUR_S, 24),
        ("7d", DAY_S, 7),
        ("30d", DAY_S, 30),
    ],
)
def test_sliding_window_size_and_count(window: str, size_s: int, count: int) -> None:
    now_ms = ms("2024-03-01T12:34:56.789")
    got_size, starts = window_buckets(window, now_ms)
    assert got_size == size_s
    assert len(starts) == count
    assert starts[-1] == bucket_start_ms(now_ms, size_s)
    assert starts[0] == starts[-1] - (count - 1) * size_s * 1000


@given(st.sampled_from(list(SLIDING_WINDOWS)), timestamps)
def test_sliding_window_is_contiguous_and_ends_at_now(window: str, now_ms: int) -> None:
    size_s, starts = window_buckets(window, now_ms)
    assert isinstance(size_s, int)
    size_ms = size_s * 1000
    assert (size_s, len(starts)) == SLIDING_WINDOWS[window]
    assert all(b - a == size_ms for a, b in zip(starts, starts[1:], strict=False))
    assert starts[-1] <= now_ms < starts[-1] + size_ms
    # The buckets cover between W - b and W of history.
    covered_ms = now_ms - starts[0]
    assert WINDOW_LENGTH_S[window] * 1000 - size_ms <= covered_ms < WINDOW_LENGTH_S[window] * 1000


def test_sliding_five_minutes_known_value() -> None:
    assert window_buckets("5m", 600_000) == (60, [360_000, 420_000, 480_000, 540_000, 600_000])
    assert window_buckets("5m", 659_999) == (60, [360_000, 420_000, 480_000, 540_000, 600_000])


def test_unknown_window() -> None:
    with pytest.raises(ValueError) as exc:
        window_buckets("2h", 0)
    assert str(exc.value) == (
        "unknown window '2h'; expected one of 1m, 5m, 1h, 1d, 7d, 30d, today, week, month"
    )


# --- window_buckets: calendar ------------------------------------------------------------------


def days(first: str, count: int) -> list[int]:
    start = ms(first)
    return [start + i * DAY_MS for i in range(count)]


@pytest.mark.parametrize(
    ("window", "now", "first", "count"),
    [
        ("today", "2024-03-01T00:00:00", "2024-03-01T00:00:00", 1),
        ("today", "2024-02-29T23:59:59.999", "2024-02-29T00:00:00", 1),
        # February 2024 has 29 days; the last millisecond of it sums every one of them.
        ("month", "2024-02-29T23:59:59.999", "2024-02-01T00:00:00", 29),
        # One millisecond later the new month starts with a single bucket.
        ("month", "2024-03-01T00:00:00", "2024-03-01T00:00:00", 1),
        ("month", "2023-12-31T23:00:00", "2023-12-01T00:00:00", 31),
        ("month", "2024-01-01T00:00:00.001", "2024-01-01T00:00:00", 1),
        ("month", "2023-02-28T12:00:00", "2023-02-01T00:00:00", 28),
        # 2024-03-03 is a Sunday: its ISO week began on Monday 2024-02-26, across the month end.
        ("week", "2024-03-03T23:59:59.999", "2024-02-26T00:00:00", 7),
        ("week", "2024-03-04T00:00:00", "2024-03-04T00:00:00", 1),
        ("week", "2024-03-06T08:00:00", "2024-03-04T00:00:00", 3),
        # The ISO week across a year end: Monday 2024-12-30 to Sunday 2025-01-05.
        ("week", "2025-01-01T10:00:00", "2024-12-30T00:00:00", 3),
        ("week", "2025-01-05T23:59:59", "2024-12-30T00:00:00", 7),
    ],
)
def test_calendar_windows(window: str, now: str, first: str, count: int) -> None:
    assert window_buckets(window, ms(now)) == (DAY_S, days(first, count))


@given(st.sampled_from(CALENDAR_WINDOWS), timestamps)
def test_calendar_window_properties(window: str, now_ms: int) -> None:
    size_s, starts = window_buckets(window, now_ms)
    assert size_s == DAY_S
    assert starts[-1] == bucket_start_ms(now_ms, DAY_S)
    assert all(b - a == DAY_MS for a, b in zip(starts, starts[1:], strict=False))
    first = datetime.fromtimestamp(starts[0] / 1000, tz=UTC)
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    if window == "today":
        assert len(starts) == 1
    elif window == "week":
        assert first.weekday() == 0
        assert len(starts) == now.weekday() + 1
    else:
        assert first.day == 1
        assert (first.year, first.month) == (now.year, now.month)
        assert len(starts) == now.day


@given(timestamps)
def test_calendar_today_is_the_day_bucket(now_ms: int) -> None:
    assert calendar_start_ms("today", now_ms) == bucket_start_ms(now_ms, DAY_S)


def test_calendar_start_known_values() -> None:
    assert calendar_start_ms("week", 1_700_000_000_000) == 1_699_833_600_000
    assert calendar_start_ms("month", 1_700_000_000_000) == 1_698_796_800_000


def test_calendar_start_unknown_window() -> None:
    with pytest.raises(ValueError) as exc:
        calendar_start_ms("year", 0)
    assert str(exc.value) == "unknown calendar window 'year'"


# --- writable_buckets --------------------------------------------------------------------------


def test_fresh_event_writes_every_size() -> None:
    ts_ms = ms("2024-03-01T12:34:56.789")
    got = writable_buckets(ts_ms, ts_ms)
    assert [size_s for size_s, _, _ in got] == [60, 300, 3600, 86400]
    for (size_s, start, expiry), size in zip(got, BUCKET_SIZES, strict=True):
        assert start == bucket_start_ms(ts_ms, size_s)
        assert expiry == bucket_expiry_ms(start, size)


@pytest.mark.parametrize("size", BUCKET_SIZES, ids=lambda s: f"{s.size_s}s")
def test_lateness_boundary_per_size(size: BucketSize) -> None:
    ts_ms = ms("2024-03-01T00:00:00")  # the start of a bucket of every size
    expiry = ts_ms + (size.size_s + size.retention_s) * 1000
    still = [s for s, _, _ in writable_buckets(ts_ms, expiry - 1)]
    gone = [s for s, _, _ in writable_buckets(ts_ms, expiry)]
    assert size.size_s in still
    assert size.size_s not in gone


def test_lateness_drops_small_buckets_first() -> None:
    ts_ms = 0
    hour_ms = HOUR_S * 1000
    assert [b[0] for b in writable_buckets(ts_ms, 2 * hour_ms)] == [60, 300, 3600, 86400]
    assert [b[0] for b in writable_buckets(ts_ms, 3 * hour_ms)] == [300, 3600, 86400]
    assert [b[0] for b in writable_buckets(ts_ms, 5 * hour_ms)] == [3600, 86400]
    assert [b[0] for b in writable_buckets(ts_ms, 4 * DAY_MS)] == [86400]
    assert writable_buckets(ts_ms, 71 * DAY_MS) == []


@given(timestamps, st.integers(min_value=0, max_value=50 * DAY_MS))
def test_writable_buckets_are_the_unexpired_ones(ts_ms: int, late_ms: int) -> None:
    now_ms = ts_ms + late_ms
    got = writable_buckets(ts_ms, now_ms)
    assert all(expiry > now_ms for _, _, expiry in got)
    expected = [
        s.size_s
        for s in BUCKET_SIZES
        if bucket_expiry_ms(bucket_start_ms(ts_ms, s.size_s), s) > now_ms
    ]
    assert [size_s for size_s, _, _ in got] == expected


@pytest.mark.parametrize("window", list(SLIDING_WINDOWS) + list(CALENDAR_WINDOWS))
def test_retention_covers_every_window(window: str) -> None:
    # A bucket read by a window must still exist: its expiry lies after the read time.
    now_ms = ms("2024-03-31T23:59:59.999")  # the end of a 31-day month, the longest read
    size_s, starts = window_buckets(window, now_ms)
    size = next(s for s in BUCKET_SIZES if s.size_s == size_s)
    assert all(bucket_expiry_ms(start, size) > now_ms for start in starts)


# --- parse_duration_s --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("2h", 7200),
        ("7d", 604_800),
        ("2w", 1_209_600),
        ("30", 30),
        ("0", 0),
        ("0s", 0),
        (" 15m ", 900),
    ],
)
def test_parse_duration_s(text: str, seconds: int) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "1.5h", "-5s", "15M", "1h30m", "abc", "15 m", "1y"])
def test_parse_duration_s_rejects(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_duration_s(text)
    assert str(exc.value) == f"expected a duration like 30s, 15m, 1h or 7d, got {text!r}"


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["s", "m", "h", "d", "w", ""]))
def test_parse_duration_s_round_trip(number: int, unit: str) -> None:
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800, "": 1}[unit]
    assert parse_duration_s(f"{number}{unit}") == number * factor


def test_parse_duration_s_rejects_superscript_digit_with_its_own_message() -> None:
    with pytest.raises(ValueError) as exc:
        parse_duration_s("²m")
    assert str(exc.value) == "expected a duration like 30s, 15m, 1h or 7d, got '²m'"
