"""A generated event set for the report tests, and the answers computed from it in plain Python
(price arithmetic on the published per-token prices, date arithmetic with datetime)."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import orjson

DAY_MS = 86_400_000
TENANTS = ("acme", "globex", "initech")
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-haiku-4-5")
FEATURES = ("chat", "search", "summarize", None)


@dataclass(frozen=True)
class Expected:
    """One generated event and what it should count for."""

    fields: dict[str, Any]
    day: date
    cost: float
    input_cost: float
    output_cost: float
    quality: float | None

    def get(self, name: str) -> Any:
        return self.fields.get(name)


def _prices() -> dict[str, dict[str, float]]:
    text = (resources.files("detector") / "data" / "prices.json").read_text()
    table: dict[str, dict[str, float]] = json.loads(text)
    return {m: table[m] for m in MODELS}


def generate(now_ms: int, n: int, days_back: int, seed: int) -> list[Expected]:
    """n events spread over the `days_back` days before now_ms, with their expected costs."""
    rng = random.Random(seed)
    prices = _prices()
    out = []
    for i in range(n):
        tenant = rng.choice(TENANTS)
        model = rng.choice(MODELS)
        ts_ms = now_ms - rng.randrange(days_back * DAY_MS)
        input_tokens = rng.randrange(100, 8000)
        cached = rng.choice((0, 0, input_tokens // 2))
        output_tokens = rng.randrange(10, 3000)
        fields: dict[str, Any] = {
            "event_id": f"r{seed}-{i}",
            "ts": ts_ms,
            "tenant_id": tenant,
            "model": model,
            "input_tokens": input_tokens,
            "cached_input_tokens": cached,
            "output_tokens": output_tokens,
            "api_key_id": f"{tenant}-k{rng.randrange(4)}",
            "session_id": f"{tenant}-s{rng.randrange(40)}",
        }
        if rng.random() < 0.9:
            fields["user_id"] = f"{tenant}-u{rng.randrange(12)}"
        feature = rng.choice(FEATURES)
        if feature is not None:
            fields["feature"] = feature
        p = prices[model]
        input_cost = (input_tokens - cached) * p["input_cost_per_token"] + cached * p[
            "cache_read_input_token_cost"
        ]
        output_cost = output_tokens * p["output_cost_per_token"]
        if rng.random() < 0.2:
            # The gateway's figure is the truth, split in the table's proportions.
            billed = round(rng.uniform(0.001, 0.2), 6)
            fields["cost_usd"] = billed
            share = input_cost / (input_cost + output_cost)
            input_cost, output_cost = billed * share, billed * (1 - share)
        quality = None
        roll = rng.random()
        if roll < 0.4:
            quality = rng.choice((0.2, 0.5, 0.75, 0.9, 1.0))
            fields["tags"] = {"quality": str(quality)}
        elif roll < 0.45:
            fields["tags"] = {"quality": rng.choice(("1.5", "-0.1", "good"))}  # ignored
        day = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).date()
        out.append(Expected(fields, day, input_cost + output_cost, input_cost, output_cost,
                            quality))  # fmt: skip
    return out


def raw(events: list[Expected]) -> list[tuple[bytes, bytes]]:
    return [(e.fields["tenant_id"].encode(), orjson.dumps(e.fields)) for e in events]


def days(first: date, last: date) -> set[date]:
    return {first + timedelta(days=i) for i in range((last - first).days + 1)}


def calendar(kind: str, at: date, today: date) -> set[date]:
    """The days of the UTC day, ISO week or month holding `at`, up to today."""
    if kind == "day":
        first, last = at, at
    elif kind == "week":
        first = at - timedelta(days=at.weekday())
        last = first + timedelta(days=6)
    else:
        first = at.replace(day=1)
        last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return days(first, min(last, today))


def before(kind: str, period: set[date]) -> set[date]:
    """The like-for-like period: a week earlier (day, week) or the month before, as many days."""
    first = min(period)
    if kind != "month":
        return {d - timedelta(days=7) for d in period}
    prev_last = first - timedelta(days=1)
    prev_first = prev_last.replace(day=1)
    return days(prev_first, min(prev_first + timedelta(days=len(period) - 1), prev_last))


def select(events: list[Expected], period: set[date], tenant: str | None) -> list[Expected]:
    return [
        e for e in events if e.day in period and (tenant is None or e.get("tenant_id") == tenant)
    ]


def cost_by(events: list[Expected], *fields: str) -> dict[tuple[Any, ...], float]:
    """Cost summed by the values of `fields` (events lacking one are left out)."""
    out: dict[tuple[Any, ...], float] = defaultdict(float)
    for e in events:
        key = tuple(e.get(f) for f in fields)
        if None not in key:
            out[key] += e.cost
    return dict(out)
