"""Threshold rules with `where` filters count only the matching events, exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from detector.pipeline import Deps, handle_batch
from detector.rules.schema import ThresholdRule

from .conftest import event_bytes

RULES = """
rules:
  - id: chat-on-big-models
    scope: tenant
    metric: cost_usd
    window: 1h
    threshold: 5
    where: {feature: chat, model: [gpt-4o, o3]}
  - id: feature-pair
    scope: tenant+feature
    metric: requests
    window: 5m
    threshold: 2
"""


@pytest.fixture
def deps(pipeline_deps_factory: Callable[[str], Deps]) -> Deps:
    return pipeline_deps_factory(RULES)


async def test_where_counts_only_matching_events(deps: Deps) -> None:
    now_ms = time.time_ns() // 1_000_000
    n = 0

    async def spend(usd: float, feature: str, model: str) -> list[str]:
        nonlocal n
        n += 1
        body = event_bytes(event_id=f"e{n}", ts=now_ms, tenant_id="acme", feature=feature,
                           model=model, cost_usd=usd)  # fmt: skip
        result = await handle_batch([(b"acme", body), (b"acme", body)], deps, now_ms)
        return [a.message for a in result.alerts if a.rule_id == "chat-on-big-models"]

    assert await spend(3.0, "chat", "gpt-4o") == []
    assert await spend(10.0, "search", "gpt-4o") == []  # other feature
    assert await spend(10.0, "chat", "gpt-4o-mini") == []  # other model
    [message] = await spend(3.0, "chat", "o3")  # the duplicate in each batch counts once
    assert message == "cost_usd over 1h is 6 (> 5) for tenant acme"


async def test_tenant_pair_is_the_dimension_within_the_tenant(deps: Deps) -> None:
    rule = deps.rules().rules[1]
    assert isinstance(rule, ThresholdRule) and rule.scope.value == "feature"
    now_ms = time.time_ns() // 1_000_000
    batch = [
        (
            b"acme",
            event_bytes(
                event_id=f"p{i}",
                ts=now_ms,
                tenant_id="acme",
                feature="agent",
                model="gpt-4o",
                cost_usd=0.1,
            ),
        )  # fmt: skip
        for i in range(3)
    ]
    result = await handle_batch(batch, deps, now_ms)
    assert [a.message for a in result.alerts] == ["requests over 5m is 3 (> 2) for feature agent"]
