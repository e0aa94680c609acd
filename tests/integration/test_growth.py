"""Growth rules through the pipeline over real Redis: a window against the same window one
period earlier, with a minimum base."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from detector.pipeline import Deps, handle_batch
from detector.schemas import Scope

from .conftest import event_bytes

RULES = """
rules:
  - id: tenant-hour-over-hour
    kind: growth
    scope: tenant
    window: 1h
    vs: 1h
    factor: 3
    min_base: 5
    action: throttle
    retry_after_s: 30
    for: 20m
"""
T0 = 1_764_770_400_000  # a whole hour, so both windows are whole 5-minute buckets


@pytest.fixture
def deps(pipeline_deps_factory: Callable[[str], Deps]) -> Deps:
    return pipeline_deps_factory(RULES)


async def spend(deps: Deps, tenant: str, usd: float, at_ms: int, n: int) -> list[str]:
    body = event_bytes(event_id=f"{tenant}-{n}", ts=at_ms, tenant_id=tenant, model="gpt-4o",
                       cost_usd=usd)  # fmt: skip
    result = await handle_batch([(tenant.encode(), body)], deps, at_ms)
    return [a.message for a in result.alerts]


async def test_fires_at_the_factor_not_before(deps: Deps) -> None:
    assert await spend(deps, "acme", 10.0, T0 - 70 * 60_000, 1) == []
    assert await spend(deps, "acme", 25.0, T0 + 5 * 60_000, 2) == []  # 2.5x
    [message] = await spend(deps, "acme", 6.0, T0 + 6 * 60_000, 3)  # 3.1x
    assert message.startswith(
        "cost_usd over 1h is 31, 3.1x the 10 of 1h earlier (limit 3x) for tenant acme; "
        "throttle until "
    )
    [decision] = await deps.decisions.lookup([("acme", Scope.tenant, "acme")], T0 + 6 * 60_000)
    assert decision.rule_id == "tenant-hour-over-hour" and decision.action.value == "throttle"


async def test_no_alert_below_the_minimum_base(deps: Deps) -> None:
    assert await spend(deps, "tiny", 1.0, T0 - 70 * 60_000, 1) == []
    assert await spend(deps, "tiny", 100.0, T0 + 5 * 60_000, 2) == []  # 100x, but from $1
    assert await spend(deps, "fresh", 100.0, T0 + 5 * 60_000, 1) == []  # nothing before
