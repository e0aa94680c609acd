"""The built-in abuse patterns through the pipeline over real Redis: runaway session, burst from
a new entity, shared API key."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from detector.pipeline import Deps, handle_batch
from detector.schemas import Scope

from .conftest import event_bytes

RULES = """
rules:
  - id: runaway
    kind: abuse
    pattern: runaway_session
    window: 5m
    max_requests: 20
    max_cost_usd: 50
    action: block
    for: 1h
  - id: new-user-burst
    kind: abuse
    pattern: new_entity_burst
    scope: user
    window: 1h
    new_within: 1d
    max_cost_usd: 30
    action: throttle
    retry_after_s: 120
  - id: key-sharing
    kind: abuse
    pattern: shared_key
    window: 1h
    max_users: 5
    max_tenants: 1
    action: alert
"""


@pytest.fixture
def deps(pipeline_deps_factory: Callable[[str], Deps]) -> Deps:
    return pipeline_deps_factory(RULES)


class Traffic:
    def __init__(self, deps: Deps) -> None:
        self.deps, self.n = deps, 0
        self.now_ms = time.time_ns() // 1_000_000

    async def send(self, count: int, at_ms: int | None = None, **fields: object) -> list[str]:
        at = at_ms if at_ms is not None else self.now_ms
        batch = []
        for _ in range(count):
            self.n += 1
            body = {"tenant_id": "acme", "model": "gpt-4o", "cost_usd": 0.01, **fields}
            batch.append((None, event_bytes(event_id=f"e{self.n}", ts=at, **body)))
        result = await handle_batch(batch, self.deps, at)
        return [f"{a.rule_id}:{a.metric}:{a.observed:g}" for a in result.alerts]


async def test_runaway_session_by_requests_and_by_cost(deps: Deps) -> None:
    t = Traffic(deps)
    assert await t.send(20, session_id="loop") == []
    assert await t.send(1, session_id="loop") == ["runaway:requests:21"]
    [block] = await deps.decisions.lookup([("acme", Scope.session, "loop")], t.now_ms)
    assert block.action.value == "block" and block.rule_id == "runaway"
    assert block.reason == "runaway session: requests over 5m is 21 (> 20) for session loop"
    alerts = await t.send(1, session_id="pricey", cost_usd=51.0)
    assert alerts == ["runaway:cost_usd:51"]


async def test_burst_from_a_new_user_only(deps: Deps) -> None:
    t = Traffic(deps)
    two_days_ago = t.now_ms - 2 * 86_400_000
    # "veteran" was first seen two days ago, so the same spend is not a new-entity burst.
    assert await t.send(1, at_ms=two_days_ago, user_id="veteran", cost_usd=1.0) == []
    assert await t.send(1, user_id="veteran", cost_usd=40.0) == []
    assert await t.send(1, user_id="newcomer", cost_usd=20.0) == []
    assert await t.send(1, user_id="newcomer", cost_usd=15.0) == ["new-user-burst:cost_usd:35"]
    [throttle] = await deps.decisions.lookup([("acme", Scope.user, "newcomer")], t.now_ms)
    assert throttle.action.value == "throttle"


async def test_key_used_by_many_users_or_from_two_tenants(deps: Deps) -> None:
    t = Traffic(deps)
    for i in range(5):
        assert await t.send(1, api_key_id="k1", user_id=f"u{i}") == []
    assert await t.send(1, api_key_id="k1", user_id="u5") == ["key-sharing:distinct_users:6"]
    # The same key id used from a second tenant.
    assert await t.send(1, api_key_id="k2", user_id="a") == []
    alerts = await t.send(1, api_key_id="k2", user_id="a", tenant_id="globex")
    assert alerts == ["key-sharing:distinct_tenants:2"]
