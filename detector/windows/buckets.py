"""Pure time maths for the spend windows: bucket sizes, retention, and which buckets a window sums.

A sliding window of length W read at time `now` sums the buckets of size b that start in
(now - W, now], so it covers between W - b and W of history: 1m and 5m windows sum minute
buckets, 1h sums 5-minute buckets, 1d sums hour buckets, 7d and 30d sum day buckets. Calendar
windows (today, week, month) sum day buckets from the start of the UTC day, ISO week or month.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

MINUTE_S = 60
HOUR_S = 3600
DAY_S = 86400


@dataclass(frozen=True, slots=True)
class BucketSize:
    size_s: int
    retention_s: int  # a bucket is kept (and still written by late events) this long after it ends


# Retention covers the longest window read from each size, plus room for late events.
BUCKET_SIZES: tuple[BucketSize, ...] = (
    BucketSize(MINUTE_S, 2 * HOUR_S),
    BucketSize(5 * MINUTE_S, 4 * HOUR_S),
    BucketSize(HOUR_S, 3 * DAY_S),
    BucketSize(DAY_S, 70 * DAY_S),  # reports compare a month with the one before
)
MAX_RETENTION_S = max(b.size_s + b.retention_s for b in BUCKET_SIZES)

# Sliding windows: name -> (bucket size, number of buckets summed).
SLIDING_WINDOWS: dict[str, tuple[int, int]] = {
    "1m": (MINUTE_S, 1),
    "5m": (MINUTE_S, 5),
    "1h": (5 * MINUTE_S, 12),
    "1d": (HOUR_S, 24),
    "7d": (DAY_S, 7),
    "30d": (DAY_S, 30),
}
CALENDAR_WINDOWS = ("today", "week", "month")
WINDOWS: tuple[str, ...] = (*SLIDING_WINDOWS, *CALENDAR_WINDOWS)

# Window lengths in seconds, for rules that compare a window with a duration.
WINDOW_LENGTH_S: dict[str, int] = {name: size * n for name, (size, n) in SLIDING_WINDOWS.items()}


def bucket_start_ms(ts_ms: int, size_s: int) -> int:
    """Start of the bucket of `size_s` seconds that holds ts_ms.

    >>> bucket_start_ms(61_500, 60)
    60000
    """
    size_ms = size_s * 1000
    return ts_ms - ts_ms % size_ms


def bucket_expiry_ms(start_ms: int, size: BucketSize) -> int:
    """Absolute expiry of a bucket: its end plus its retention.

    >>> bucket_expiry_ms(0, BucketSize(60, 120))
    180000
    """
    return start_ms + (size.size_s + size.retention_s) * 1000


# An event later than the allowed lateness only updates buckets at least this long, which
# feed the 1d, 7d, 30d and calendar windows: a short window must not jump from old news.
LATE_MIN_BUCKET_S = HOUR_S


def writable_buckets(
    ts_ms: int, now_ms: int, allowed_lateness_ms: int | None = None
) -> list[tuple[int, int, int]]:
    """(size_s, bucket start, expiry) of every bucket an event at ts_ms still updates.

    Buckets already past their retention are skipped: the event is too late for them. An
    event older than `allowed_lateness_ms` updates only the hour and day buckets.

    >>> [b[0] for b in writable_buckets(0, 3 * 3600 * 1000)]
    [300, 3600, 86400]
    >>> [b[0] for b in writable_buckets(0, 600_000, allowed_lateness_ms=300_000)]
    [3600, 86400]
    """
    late = allowed_lateness_ms is not None and ts_ms < now_ms - allowed_lateness_ms
    out = []
    for size in BUCKET_SIZES:
        if late and size.size_s < LATE_MIN_BUCKET_S:
            continue
        start = bucket_start_ms(ts_ms, size.size_s)
        expiry = bucket_expiry_ms(start, size)
        if expiry > now_ms:
            out.append((size.size_s, start, expiry))
    return out


def shifted(window: str, earlier_s: int) -> str:
    """Name of `window` read `earlier_s` seconds in the past (for growth rules).

    >>> shifted("1h", 3600)
    '1h@-3600s'
    """
    return f"{window}@-{earlier_s}s"


def filtered(window: str, series: str) -> str:
    """Name of `window` read from a rule's own filtered series instead of the entity's.

    >>> filtered("1h", "r.chat-spend")
    '1h#r.chat-spend'
    """
    return f"{window}#{series}"


# Key part of the day buckets aligned on a tenant's local midnight (tenants with a time zone).
LOCAL_DAY = f"{DAY_S}z"


def local_day_start_ms(ts_ms: int, zone: tzinfo) -> int:
    """Epoch ms of the local midnight that starts the day holding ts_ms in `zone`.

    >>> from zoneinfo import ZoneInfo
    >>> local_day_start_ms(1_700_000_000_000, ZoneInfo("Asia/Tokyo"))  # 07:13 in Tokyo
    1699974000000
    """
    return calendar_start_ms("today", ts_ms, zone)


def window_buckets(
    window: str, now_ms: int, zone: tzinfo | None = None
) -> tuple[int | str, list[int]]:
    """(bucket size, bucket starts) summed to read `window` at now_ms.

    A name made by `shifted` reads the window as it was that long before now_ms. With a time
    zone, calendar windows start at local midnight and sum the local day buckets (LOCAL_DAY).

    >>> window_buckets("5m", 600_000)
    (60, [360000, 420000, 480000, 540000, 600000])
    >>> window_buckets("today", 86_400_000 + 5)
    (86400, [86400000])
    >>> window_buckets("1m@-60s", 600_000)
    (60, [540000])
    """
    window = window.partition("#")[0]
    if "@-" in window:
        base, _, earlier = window.partition("@-")
        return window_buckets(base, now_ms - parse_duration_s(earlier) * 1000, zone)
    if window in SLIDING_WINDOWS:
        size_s, count = SLIDING_WINDOWS[window]
        last = bucket_start_ms(now_ms, size_s)
        return size_s, [last - i * size_s * 1000 for i in range(count - 1, -1, -1)]
    if window in CALENDAR_WINDOWS and zone is not None:
        day = datetime.fromtimestamp(calendar_start_ms(window, now_ms, zone) / 1000, tz=zone)
        last = local_day_start_ms(now_ms, zone)
        starts = []
        while (start := int(day.timestamp() * 1000)) <= last:
            starts.append(start)
            after = day + timedelta(days=1)  # wall-clock arithmetic; the offset is redone
            day = datetime(after.year, after.month, after.day, tzinfo=zone)
        return LOCAL_DAY, starts
    if window in CALENDAR_WINDOWS:
        first = calendar_start_ms(window, now_ms)
        last = bucket_start_ms(now_ms, DAY_S)
        return DAY_S, list(range(first, last + 1, DAY_S * 1000))
    raise ValueError(f"unknown window {window!r}; expected one of {', '.join(WINDOWS)}")


def calendar_start_ms(window: str, now_ms: int, zone: tzinfo | None = None) -> int:
    """Start (midnight, UTC unless a zone is given) of the calendar day, ISO week or month
    that holds now_ms.

    >>> calendar_start_ms("week", 1_700_000_000_000)  # Tue 2023-11-14 -> Mon 2023-11-13
    1699833600000
    >>> calendar_start_ms("month", 1_700_000_000_000)
    1698796800000
    """
    tz = zone or UTC
    day = datetime.fromtimestamp(now_ms / 1000, tz=tz).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    if window == "week":
        day -= timedelta(days=day.weekday())
    elif window == "month":
        day = day.replace(day=1)
    elif window != "today":
        raise ValueError(f"unknown calendar window {window!r}")
    # Rebuilt from the date so that the zone's offset is the one in force at that midnight.
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def calendar_end_ms(window: str, now_ms: int, zone: tzinfo | None = None) -> int:
    """End (next midnight, Monday or 1st; UTC unless a zone is given) of the calendar period
    that holds now_ms.

    >>> calendar_end_ms("month", 1_700_000_000_000)  # 2023-11-14 -> 2023-12-01
    1701388800000
    >>> calendar_end_ms("week", 1_700_000_000_000) - calendar_start_ms("week", 1_700_000_000_000)
    604800000
    """
    tz = zone or UTC
    start = datetime.fromtimestamp(calendar_start_ms(window, now_ms, zone) / 1000, tz=tz)
    if window == "today":
        end = start + timedelta(days=1)
    elif window == "week":
        end = start + timedelta(days=7)
    else:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return int(datetime(end.year, end.month, end.day, tzinfo=tz).timestamp() * 1000)


def parse_duration_s(text: str) -> int:
    """Seconds in a duration such as '90s', '15m', '1h', '7d' or a bare number of seconds.

    >>> parse_duration_s("15m"), parse_duration_s("2h"), parse_duration_s("30")
    (900, 7200, 30)
    """
    units = {"s": 1, "m": MINUTE_S, "h": HOUR_S, "d": DAY_S, "w": 7 * DAY_S}
    value = text.strip()
    if value[-1:] in units:
        number, unit = value[:-1], units[value[-1]]
    else:
        number, unit = value, 1
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"expected a duration like 30s, 15m, 1h or 7d, got {text!r}")
    return int(number) * unit
