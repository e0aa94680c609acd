"""Budget rules through the pipeline over real Redis: each fraction once per period, the action
at the whole budget, per-entity amounts, shadow mode."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from detector.pipeline import Deps, handle_batch
from detector.schemas import Alert, Scope
from detector.windows.buckets import calendar_end_ms

from .conftest import event_bytes

RULES = """
budgets:
  - id: tenant-daily
    scope: tenant
    period: day
    amount_usd: 10
    overrides: {big: 100}
    alert_at: [0.5, 0.8, 1.0]
    action: block
    severity: critical
  - id: user-daily-trial
    scope: user
    period: day
    amount_usd: 30
    alert_at: [1.0]
    action: throttle
    shadow: true
"""


@pytest.fixture
def deps(pipeline_deps_factory: Callable[[str], Deps]) -> Deps:
    return pipeline_deps_factory(RULES)


class Spender:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.n = 0
        self.now_ms = time.time_ns() // 1_000_000
        self.last_alerts: list[Alert] = []

    async def spend(self, tenant: str, usd: float, user: str = "u1") -> list[str]:
        """Spend `usd` in one event; return the alerts the batch raised as 'rule@observed'."""
        self.n += 1
        body = event_bytes(
            event_id=f"e{self.n}",
            ts=self.now_ms,
            tenant_id=tenant,
            user_id=user,
            model="gpt-4o",
            cost_usd=usd,
        )
        result = await handle_batch([(tenant.encode(), body)], self.deps, self.now_ms)
        self.last_alerts = result.alerts
        return [f"{a.rule_id}:{a.threshold:g}:{a.action.value}" for a in result.alerts]


async def test_each_fraction_once_and_block_at_the_whole_budget(deps: Deps) -> None:
    s = Spender(deps)
    assert await s.spend("acme", 4.0, user="u1") == []
    assert await s.spend("acme", 2.0, user="u2") == ["tenant-daily:5:alert"]
    assert await s.spend("acme", 3.0, user="u3") == ["tenant-daily:8:alert"]
    lookup = [("acme", Scope.tenant, "acme")]
    assert await deps.decisions.lookup(lookup, s.now_ms) == []
    assert await s.spend("acme", 1.5, user="u4") == ["tenant-daily:10:block"]
    [block] = await deps.decisions.lookup(lookup, s.now_ms)
    assert block.rule_id == "tenant-daily" and block.action.value == "block"
    assert block.until_ms == calendar_end_ms("today", s.now_ms)
    assert block.reason == "tenant acme has spent $10.5 of its $10 daily budget (100% reached)"
    # Past the budget, more spend raises nothing new this period.
    assert await s.spend("acme", 5.0, user="u5") == []


async def test_a_batch_that_jumps_announces_only_the_highest_fraction(deps: Deps) -> None:
    s = Spender(deps)
    assert await s.spend("globex", 9.0, user="a") == ["tenant-daily:8:alert"]
    assert await s.spend("globex", 0.5, user="b") == []  # 50% was claimed with 80%


async def test_entity_override_and_shadow_budget(deps: Deps) -> None:
    s = Spender(deps)
    # $31 is 31% of big's own $100 budget, so no tenant alert; the user's $30 trial budget is
    # crossed in shadow mode: reported, not enforced.
    alerts = await s.spend("big", 31.0, user="heavy")
    assert alerts == ["user-daily-trial:30:throttle"]
    [shadow] = s.last_alerts
    assert shadow.shadow and "would have applied throttle" in shadow.message
    found = await deps.decisions.lookup([("big", Scope.user, "heavy")], s.now_ms)
    assert found == []
    assert sorted(await s.spend("big", 25.0, user="other")) == ["tenant-daily:50:alert"]
