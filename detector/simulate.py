"""Seeded synthetic gateway traffic with scripted incidents, for the demo, tests and benchmarks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# (model, typical input tokens, typical output tokens)
MODELS = (
    ("gpt-4o-mini", 1200, 300),
    ("gpt-4o", 1500, 400),
    ("claude-sonnet-4-5", 2000, 500),
    ("gemini-2.5-flash", 1800, 350),
)
FEATURES = ("chat", "search", "summarize", "agent")


@dataclass(frozen=True)
class Scenario:
    """Background traffic over `tenants`, and one abusive tenant from `abuse_at_s` on."""

    seed: int = 7
    tenants: int = 4
    users_per_tenant: int = 25
    duration_s: float = 60.0
    rate_per_s: float = 40.0  # background events per second, all tenants together
    abuse_tenant: str | None = "tenant-0"
    abuse_at_s: float = 20.0
    abuse_rate_per_s: float = 12.0
    abuse_model: str = "gpt-4o"
    abuse_output_tokens: int = 12_000


def generate(scenario: Scenario, start_ms: int) -> Iterator[dict[str, Any]]:
    """Events in event-time order; ts_ms starts at start_ms (the caller may pace them)."""
    rng = random.Random(scenario.seed)
    tenants = [f"tenant-{i}" for i in range(scenario.tenants)]
    t_s, seq = 0.0, 0
    next_abuse_s = scenario.abuse_at_s
    while t_s < scenario.duration_s:
        t_s += rng.expovariate(scenario.rate_per_s)
        while scenario.abuse_tenant and next_abuse_s <= t_s and next_abuse_s < scenario.duration_s:
            seq += 1
            yield _abusive(scenario, rng, start_ms + int(next_abuse_s * 1000), seq)
            next_abuse_s += rng.expovariate(scenario.abuse_rate_per_s)
        if t_s >= scenario.duration_s:
            break
        seq += 1
        yield _background(scenario, rng, tenants, start_ms + int(t_s * 1000), seq)


def _background(
    scenario: Scenario, rng: random.Random, tenants: list[str], ts_ms: int, seq: int
) -> dict[str, Any]:
    tenant = rng.choice(tenants)
    user = rng.randrange(scenario.users_per_tenant)
    model, tokens_in, tokens_out = rng.choice(MODELS)
    feature = rng.choice(FEATURES)
    event: dict[str, Any] = {
        "event_id": f"sim-{scenario.seed}-{seq}",
        "ts": ts_ms,
        "tenant_id": tenant,
        "user_id": f"{tenant}-user-{user}",
        "feature": feature,
        "api_key_id": f"{tenant}-key-{user % 3}",
        "session_id": f"{tenant}-s-{user}-{ts_ms // 600_000}",
        "model": model,
        "input_tokens": max(1, int(rng.lognormvariate(0, 0.5) * tokens_in)),
        "output_tokens": max(1, int(rng.lognormvariate(0, 0.6) * tokens_out)),
        "status": "ok" if rng.random() > 0.01 else "error",
        "latency_ms": round(rng.uniform(200, 4000), 1),
    }
    if rng.random() < 0.3:
        event["cached_input_tokens"] = event["input_tokens"] // 2
    return event


def _abusive(scenario: Scenario, rng: random.Random, ts_ms: int, seq: int) -> dict[str, Any]:
    """A prompt-injected agent loop: one user, one key, one session, long expensive outputs."""
    tenant = scenario.abuse_tenant or "tenant-0"
    return {
        "event_id": f"sim-{scenario.seed}-{seq}",
        "ts": ts_ms,
        "tenant_id": tenant,
        "user_id": f"{tenant}-user-0",
        "feature": "agent",
        "api_key_id": f"{tenant}-key-0",
        "session_id": f"{tenant}-loop",
        "model": scenario.abuse_model,
        "input_tokens": 6000 + rng.randrange(2000),
        "output_tokens": scenario.abuse_output_tokens + rng.randrange(2000),
        "status": "ok",
        "latency_ms": round(rng.uniform(5000, 20000), 1),
    }
