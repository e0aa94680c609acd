from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.timefmt import parse_ts_ms, rfc3339

# 0001-01-01 is before the epoch; stay within what RFC 3339 text with a 4-digit year can spell.
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


@pytest.mark.parametrize(
    ("ts_ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (999, "1970-01-01T00:00:00.999Z"),
        (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
        (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
        (MAX_TS_MS, "9999-12-31T23:59:59.999Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
    ],
)
def test_rfc3339_known_values(ts_ms: int, text: str) -> None:
    assert rfc3339(ts_ms) == text


@given(st.integers(min_value=0, max_value=MAX_TS_MS))
def test_rfc3339_round_trips_through_parse_ts_ms(ts_ms: int) -> None:
    assert parse_ts_ms(rfc3339(ts_ms)) == ts_ms


@given(st.integers(min_value=0, max_value=MAX_TS_MS))
def test_rfc3339_shape(ts_ms: int) -> None:
    text = rfc3339(ts_ms)
    assert len(text) == 24
    assert text[10] == "T"
    assert text.endswith("Z")
    assert text[-4:-1] == f"{ts_ms % 1000:03d}"


@given(st.integers(min_value=0, max_value=99_999_999_999))
def test_small_numbers_are_epoch_seconds(seconds: int) -> None:
    assert parse_ts_ms(seconds) == seconds * 1000


@given(st.integers(min_value=100_000_000_000, max_value=MAX_TS_MS))
def test_large_numbers_are_epoch_milliseconds(ts_ms: int) -> None:
    assert parse_ts_ms(ts_ms) == ts_ms


@pytest.mark.parametrize(
    ("value", "ts_ms"),
    [
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20z", 1_700_000_000_000),
        ("  2023-11-14T22:13:20Z  ", 1_700_000_000_000),
        ("2023-11-14T22:13:20.5Z", 1_700_000_000_500),
        ("2023-11-14T22:13:20.123456Z", 1_700_000_000_123),
        ("2023-11-14T22:13:20.1235Z", 1_700_000_000_124),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
        ("2023-11-14T17:13:20-05:00", 1_700_000_000_000),
        (1_700_000_000, 1_700_000_000_000),
        (1_700_000_000.5, 1_700_000_000_500),
        (1_700_000_000_500, 1_700_000_000_500),
        (1.7e12, 1_700_000_000_000),
        (0, 0),
    ],
)
def test_parse_ts_ms_accepted_forms(value: object, ts_ms: int) -> None:
    assert parse_ts_ms(value) == ts_ms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "a boolean is not a timestamp"),
        (False, "a boolean is not a timestamp"),
        (-1, "not a valid epoch time: -1"),
        (-0.5, "not a valid epoch time: -0.5"),
        (float("nan"), "not a valid epoch time: nan"),
        (float("inf"), "not a valid epoch time: inf"),
        (float("-inf"), "not a valid epoch time: -inf"),
        (
            "2023-11-14T22:13:20",
            "timestamp '2023-11-14T22:13:20' has no time zone offset",
        ),
        ([1], "expected RFC 3339 text or epoch number, got list"),
        (None, "expected RFC 3339 text or epoch number, got NoneType"),
        ({"s": 1}, "expected RFC 3339 text or epoch number, got dict"),
    ],
)
def test_parse_ts_ms_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_ts_ms(value)
    assert str(exc.value) == message


def test_parse_ts_ms_rejects_text_that_is_not_a_date() -> None:
    with pytest.raises(ValueError, match="Invalid isoformat string: 'yesterday'"):
        parse_ts_ms("yesterday")
