"""bytes -> UsageEvent, or BadEvent with a stable reason code."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from detector.errors import BadEvent
from detector.schemas import UsageEvent
from detector.timefmt import parse_ts_ms

MAX_EVENT_BYTES = 64 * 1024
REQUIRED_FIELDS = ("event_id", "ts", "tenant_id", "model")
TOKEN_FIELDS = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
        "cache_creation_input_tokens",
    }
)
IDENT_FIELDS = frozenset(
    {"event_id", "tenant_id", "user_id", "feature", "api_key_id", "session_id", "model", "provider"}
)


def decode_event(raw: bytes, now_ms: int, max_future_skew_s: int, max_age_s: int) -> UsageEvent:
    """Parse and validate one Kafka message value; raise BadEvent naming what is wrong."""
    if len(raw) > MAX_EVENT_BYTES:
        raise BadEvent("too_large", f"event is {len(raw)} bytes, limit {MAX_EVENT_BYTES}")
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent("invalid_json", str(exc)) from exc
    if not isinstance(data, dict):
        raise BadEvent("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    for name in REQUIRED_FIELDS:
        if data.get(name) is None:
            raise BadEvent("missing_field", f"required field {name!r} is missing")
    try:
        ts_ms = parse_ts_ms(data["ts"])
    except (ValueError, OverflowError) as exc:
        raise BadEvent("invalid_timestamp", f"ts {data['ts']!r}: {exc}") from exc
    if ts_ms > now_ms + max_future_skew_s * 1000:
        raise BadEvent(
            "future_timestamp",
            f"ts {data['ts']!r} is more than {max_future_skew_s}s ahead of the worker's clock",
        )
    if ts_ms < now_ms - max_age_s * 1000:
        raise BadEvent("too_late", f"ts {data['ts']!r} is older than the {max_age_s}s kept")
    data["ts_ms"] = ts_ms
    try:
        return UsageEvent.model_validate(data)
    except ValidationError as exc:
        raise _bad_event(exc) from exc


def _bad_event(exc: ValidationError) -> BadEvent:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "?"
    shown = repr(err.get("input"))[:80]
    detail = f"{field}={shown}: {err['msg']}"
    if field in TOKEN_FIELDS and err["type"] == "greater_than_equal":
        return BadEvent("negative_tokens", detail)
    if field == "cost_usd":
        return BadEvent("invalid_cost", detail)
    if field in IDENT_FIELDS:
        return BadEvent("invalid_identifier", detail)
    return BadEvent("invalid_field", detail)
