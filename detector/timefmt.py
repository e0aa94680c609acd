"""Conversions between epoch milliseconds and RFC 3339 text (pure)."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ts_ms: int) -> str:
    """RFC 3339 UTC text with millisecond precision.

    >>> rfc3339(1_700_000_000_123)
    '2023-11-14T22:13:20.123Z'
    """
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def parse_ts_ms(value: object) -> int:
    """Event time in epoch ms from RFC 3339 text, epoch seconds or epoch milliseconds.

    Numbers below 1e11 are seconds (1e11 s is the year 5138), larger ones milliseconds.

    >>> parse_ts_ms("2023-11-14T22:13:20Z")
    1700000000000
    >>> parse_ts_ms(1700000000.5), parse_ts_ms(1700000000500)
    (1700000000500, 1700000000500)
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            raise ValueError(f"not a valid epoch time: {value!r}")
        return int(round(value * 1000)) if value < 1e11 else int(round(value))
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no time zone offset")
        return int(round(moment.timestamp() * 1000))
    raise ValueError(f"expected RFC 3339 text or epoch number, got {type(value).__name__}")
