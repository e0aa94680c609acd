"""A rule's decision over time, on the pipeline's clock with real Redis: cooldown between
alerts, extension while the rule keeps firing, expiry, then a fresh decision; a throttle's own
wait and rate reach the lookup API's reasons."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from detector.decisions.store import Change
from detector.pipeline import Deps, handle_batch
from detector.schemas import Scope

from .conftest import event_bytes

RULES = """
rules:
  - id: user-burn
    scope: user
    metric: cost_usd
    window: 5m
    threshold: 10
    action: throttle
    retry_after_s: 30
    rate_per_min: 6
    for: 10m
    cooldown: 15m
"""
T0 = 1_764_770_400_000
MIN = 60_000


@pytest.fixture
def deps(pipeline_deps_factory: Callable[[str], Deps]) -> Deps:
    return pipeline_deps_factory(RULES)


async def test_cooldown_extension_expiry(deps: Deps) -> None:
    n = 0

    async def spend(usd: float, at_ms: int) -> tuple[int, list[Change]]:
        """Alerts raised and decisions published by one event at `at_ms`."""
        nonlocal n
        n += 1
        body = event_bytes(event_id=f"e{n}", ts=at_ms, tenant_id="acme", user_id="u1",
                           model="gpt-4o", cost_usd=usd)  # fmt: skip
        result = await handle_batch([(b"acme", body)], deps, at_ms)
        return len(result.alerts), [Change.new] * len(result.decisions)

    async def throttled_until(at_ms: int) -> int | None:
        found = await deps.decisions.lookup([("acme", Scope.user, "u1")], at_ms)
        return found[0].until_ms if found else None

    assert await spend(10.0, T0) == (0, [])  # at the threshold, not over it
    assert await spend(0.5, T0 + 1 * MIN) == (1, [Change.new])
    assert await throttled_until(T0 + 1 * MIN) == T0 + 11 * MIN
    [decision] = await deps.decisions.lookup([("acme", Scope.user, "u1")], T0 + 1 * MIN)
    assert (decision.retry_after_s, decision.rate_per_min) == (30, 6)

    # Still over: the decision is extended, no new alert inside the 15-minute cooldown.
    assert await spend(0.5, T0 + 3 * MIN) == (0, [])
    assert await throttled_until(T0 + 3 * MIN) == T0 + 13 * MIN

    # Spend ages out of the 5-minute window; the throttle expires at T0+13m.
    assert await throttled_until(T0 + 13 * MIN + 1) is None

    # Over again after the cooldown: a new alert and a new decision.
    assert await spend(11.0, T0 + 20 * MIN) == (1, [Change.new])
    assert await throttled_until(T0 + 20 * MIN) == T0 + 30 * MIN


async def test_shadow_rule_alerts_but_never_enforces(
    pipeline_deps_factory: Callable[[str], Deps],
) -> None:
    deps = pipeline_deps_factory(RULES.replace("    cooldown: 15m", "    shadow: true"))
    body = event_bytes(event_id="s1", ts=T0, tenant_id="acme", user_id="u1", model="gpt-4o",
                       cost_usd=12.0)  # fmt: skip
    result = await handle_batch([(b"acme", body)], deps, T0)
    [alert] = result.alerts
    assert alert.shadow and alert.message.endswith("(shadow: would have applied throttle)")
    assert result.decisions == []
    assert await deps.decisions.lookup([("acme", Scope.user, "u1")], T0) == []
