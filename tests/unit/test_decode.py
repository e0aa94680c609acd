from __future__ import annotations

from typing import Any

import orjson
import pytest

from detector.errors import BadEvent
from detector.ingest.decode import MAX_EVENT_BYTES, decode_event
from detector.schemas import EventStatus, UsageEvent

TENANT_RE = "'^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$'"
NOW_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
SKEW_S = 300
MAX_AGE_S = 3600
BASE: dict[str, Any] = {
    "event_id": "e1",
    "ts": "2023-11-14T22:13:20Z",
    "tenant_id": "acme",
    "model": "gpt-4o",
}


def decode(raw: bytes) -> UsageEvent:
    return decode_event(raw, NOW_MS, SKEW_S, MAX_AGE_S)


def encode(**changes: Any) -> bytes:
    """BASE with `changes` applied; a value of ... removes the field."""
    data = {**BASE, **changes}
    return orjson.dumps({k: v for k, v in data.items() if v is not ...})


def rejection(raw: bytes) -> BadEvent:
    with pytest.raises(BadEvent) as exc:
        decode(raw)
    return exc.value


def test_minimal_event() -> None:
    event = decode(encode())
    assert event == UsageEvent(event_id="e1", ts_ms=NOW_MS, tenant_id="acme", model="gpt-4o")
    assert event.status is EventStatus.ok
    assert event.tags == {}


def test_full_event_keeps_every_field() -> None:
    raw = encode(
        user_id="u1",
        feature="chat",
        api_key_id="k1",
        session_id="s1",
        provider="openai",
        input_tokens=100,
        output_tokens=20,
        cached_input_tokens=50,
        reasoning_tokens=7,
        cache_creation_input_tokens=3,
        cost_usd=0.25,
        status="error",
        latency_ms=812.5,
        tags={"env": "prod"},
    )
    event = decode(raw)
    assert (event.user_id, event.feature, event.api_key_id, event.session_id) == (
        "u1",
        "chat",
        "k1",
        "s1",
    )
    assert event.provider == "openai"
    assert (event.input_tokens, event.output_tokens, event.cached_input_tokens) == (100, 20, 50)
    assert (event.reasoning_tokens, event.cache_creation_input_tokens) == (7, 3)
    assert event.cost_usd == 0.25
    assert event.status is EventStatus.error
    assert event.latency_ms == 812.5
    assert event.tags == {"env": "prod"}


def test_unknown_fields_are_ignored_and_ts_ms_comes_from_ts() -> None:
    event = decode(encode(ts_ms=5, colour="blue"))
    assert event.ts_ms == NOW_MS


@pytest.mark.parametrize(
    "ts",
    ["2023-11-14T22:13:20Z", "2023-11-14T23:13:20+01:00", 1_700_000_000, 1_700_000_000_000],
)
def test_timestamp_forms(ts: object) -> None:
    assert decode(encode(ts=ts)).ts_ms == NOW_MS


def test_exactly_max_size_is_accepted() -> None:
    raw = encode()
    padded = raw[:-1] + b" " * (MAX_EVENT_BYTES - len(raw)) + b"}"
    assert len(padded) == MAX_EVENT_BYTES
    assert decode(padded).event_id == "e1"


def test_too_large() -> None:
    raw = encode()
    padded = raw[:-1] + b" " * (MAX_EVENT_BYTES + 1 - len(raw)) + b"}"
    err = rejection(padded)
    assert err.reason == "too_large"
    assert str(err) == "too_large: event is 65537 bytes, limit 65536"


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"{", "unexpected end of data: line 1 column 2 (char 1)"),
        (b"", "Input is a zero-length, empty document: line 1 column 1 (char 0)"),
        (b'{"ts": NaN}', "unexpected character, expected a JSON value: line 1 column 8 (char 7)"),
    ],
)
def test_invalid_json(raw: bytes, detail: str) -> None:
    err = rejection(raw)
    assert err.reason == "invalid_json"
    assert err.detail == detail


def test_invalid_utf8_is_invalid_json() -> None:
    err = rejection(b'{"event_id": "\xff"}')
    assert err.reason == "invalid_json"


@pytest.mark.parametrize(
    ("raw", "kind"), [(b"[1]", "list"), (b"null", "NoneType"), (b'"x"', "str"), (b"3", "int")]
)
def test_not_an_object(raw: bytes, kind: str) -> None:
    err = rejection(raw)
    assert err.reason == "not_an_object"
    assert str(err) == f"not_an_object: expected a JSON object, got {kind}"


@pytest.mark.parametrize("name", ["event_id", "ts", "tenant_id", "model"])
@pytest.mark.parametrize("how", ["absent", "null"])
def test_missing_field(name: str, how: str) -> None:
    err = rejection(encode(**{name: ... if how == "absent" else None}))
    assert err.reason == "missing_field"
    assert str(err) == f"missing_field: required field {name!r} is missing"


@pytest.mark.parametrize(
    ("ts", "detail"),
    [
        ("yesterday", "ts 'yesterday': Invalid isoformat string: 'yesterday'"),
        (
            "2023-11-14T22:13:20",
            "ts '2023-11-14T22:13:20': timestamp '2023-11-14T22:13:20' has no time zone offset",
        ),
        (True, "ts True: a boolean is not a timestamp"),
        (-1, "ts -1: not a valid epoch time: -1"),
        ([1], "ts [1]: expected RFC 3339 text or epoch number, got list"),
        ({"s": 1}, "ts {'s': 1}: expected RFC 3339 text or epoch number, got dict"),
    ],
)
def test_invalid_timestamp(ts: object, detail: str) -> None:
    err = rejection(encode(ts=ts))
    assert err.reason == "invalid_timestamp"
    assert err.detail == detail


def test_future_timestamp_boundary() -> None:
    limit_ms = NOW_MS + SKEW_S * 1000
    assert decode(encode(ts=limit_ms)).ts_ms == limit_ms
    err = rejection(encode(ts=limit_ms + 1))
    assert err.reason == "future_timestamp"
    assert str(err) == (
        "future_timestamp: ts 1700000300001 is more than 300s ahead of the worker's clock"
    )


def test_future_timestamp_as_text() -> None:
    err = rejection(encode(ts="9999-12-31T23:59:59Z"))
    assert err.reason == "future_timestamp"
    assert err.detail == "ts '9999-12-31T23:59:59Z' is more than 300s ahead of the worker's clock"


def test_too_late_boundary() -> None:
    limit_ms = NOW_MS - MAX_AGE_S * 1000
    assert decode(encode(ts=limit_ms)).ts_ms == limit_ms
    err = rejection(encode(ts=limit_ms - 1))
    assert err.reason == "too_late"
    assert str(err) == "too_late: ts 1699996399999 is older than the 3600s kept"


@pytest.mark.parametrize(
    "name",
    [
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
        "cache_creation_input_tokens",
    ],
)
def test_negative_tokens(name: str) -> None:
    err = rejection(encode(**{name: -1}))
    assert err.reason == "negative_tokens"
    assert err.detail == f"{name}=-1: Input should be greater than or equal to 0"


def test_too_many_tokens_is_an_invalid_field_not_negative() -> None:
    err = rejection(encode(output_tokens=10**9 + 1))
    assert err.reason == "invalid_field"
    assert (
        err.detail == "output_tokens=1000000001: Input should be less than or equal to 1000000000"
    )


@pytest.mark.parametrize(
    ("cost", "detail"),
    [
        (-0.01, "cost_usd=-0.01: Input should be greater than or equal to 0"),
        (
            "abc",
            "cost_usd='abc': Input should be a valid number, unable to parse string as a number",
        ),
        (1e7, "cost_usd=10000000.0: Input should be less than or equal to 1000000"),
    ],
)
def test_invalid_cost(cost: object, detail: str) -> None:
    err = rejection(encode(cost_usd=cost))
    assert err.reason == "invalid_cost"
    assert err.detail == detail


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        (
            "tenant_id",
            "a{b}",
            f"tenant_id='a{{b}}': String should match pattern {TENANT_RE}",
        ),
        (
            "tenant_id",
            "",
            f"tenant_id='': String should match pattern {TENANT_RE}",
        ),
        (
            "user_id",
            "a\nb",
            "user_id='a\\nb': String should match pattern '^[^\\x00-\\x1f\\x7f]{1,256}$'",
        ),
        ("event_id", 123, "event_id=123: Input should be a valid string"),
        ("model", ["gpt"], "model=['gpt']: Input should be a valid string"),
        (
            "session_id",
            "x" * 257,
            "session_id='"
            + "x" * 79
            + ": String should match pattern '^[^\\x00-\\x1f\\x7f]{1,256}$'",
        ),
    ],
)
def test_invalid_identifier(field: str, value: object, detail: str) -> None:
    err = rejection(encode(**{field: value}))
    assert err.reason == "invalid_identifier"
    assert err.detail == detail


def test_hostile_but_printable_identifier_is_accepted() -> None:
    # Printable text is allowed in user ids; the Slack sink escapes it on the way out.
    event = decode(encode(user_id="<!channel> @here"))
    assert event.user_id == "<!channel> @here"


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        ("status", "weird", "status='weird': Input should be 'ok' or 'error'"),
        ("latency_ms", -1, "latency_ms=-1: Input should be greater than or equal to 0"),
        ("tags", {"k": 1}, "tags=1: Input should be a valid string"),
        (
            "input_tokens",
            1.5,
            "input_tokens=1.5: Input should be a valid integer, got a number "
            "with a fractional part",
        ),
    ],
)
def test_invalid_field(field: str, value: object, detail: str) -> None:
    err = rejection(encode(**{field: value}))
    assert err.reason == "invalid_field"
    assert err.detail == detail


def test_too_many_tags() -> None:
    err = rejection(encode(tags={f"k{i}": "v" for i in range(33)}))
    assert err.reason == "invalid_field"
    assert err.detail.startswith("tags={'k0': 'v', ")
    assert err.detail.endswith(
        ": Dictionary should have at most 32 items after validation, not more"
    )


def test_bad_event_str_is_reason_and_detail() -> None:
    err = BadEvent("too_late", "old")
    assert (str(err), err.reason, err.detail) == ("too_late: old", "too_late", "old")
