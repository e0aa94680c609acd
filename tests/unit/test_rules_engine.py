from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.rules.engine import (
    WindowRead,
    crosses,
    evaluate_budgets,
    evaluate_rules,
    metric_value,
    reads_needed,
)
from detector.rules.loader import parse_rules
from detector.rules.schema import RuleSet, ThresholdRule
from detector.schemas import Scope

RuleFactory = Callable[..., ThresholdRule]


def make_rule(**fields: Any) -> ThresholdRule:
    data: dict[str, Any] = {
        "id": "r1",
        "scope": "tenant",
        "metric": "cost_usd",
        "window": "1h",
        "threshold": 10,
    }
    data.update(fields)
    return ThresholdRule.model_validate(data)


@pytest.fixture
def rule_factory() -> RuleFactory:
    return make_rule


def rule_set(*rules: ThresholdRule) -> RuleSet:
    return RuleSet(rules=list(rules))


# --- reads_needed ------------------------------------------------------------------------------


def test_reads_needed_matches_scopes_and_windows(rule_factory: RuleFactory) -> None:
    rules = rule_set(
        rule_factory(id="a", scope="tenant", window="1h"),
        rule_factory(id="b", scope="tenant", window="5m"),
        rule_factory(id="c", scope="tenant", window="1h"),  # same window: read once
        rule_factory(id="d", scope="user", window="1d"),
    )
    touched = [
        ("acme", Scope.user, "u1"),
        ("acme", Scope.tenant, "acme"),
        ("acme", Scope.tenant, "acme"),  # repeated: read once
        ("acme", Scope.session, "s1"),  # no rule: not read
    ]
    assert reads_needed(rules, touched) == [
        ("acme", Scope.tenant, "acme", "1h"),
        ("acme", Scope.tenant, "acme", "5m"),
        ("acme", Scope.user, "u1", "1d"),
    ]


def test_reads_needed_without_rules_or_touches(rule_factory: RuleFactory) -> None:
    assert reads_needed(rule_set(), [("acme", Scope.tenant, "acme")]) == []
    assert reads_needed(rule_set(rule_factory()), []) == []


def test_reads_needed_is_sorted_by_target(rule_factory: RuleFactory) -> None:
    rules = rule_set(rule_factory(scope="user"))
    touched = [("b", Scope.user, "u2"), ("a", Scope.user, "u9"), ("a", Scope.user, "u1")]
    assert [r[:3] for r in reads_needed(rules, touched)] == sorted(touched)


# --- metric_value ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "name", "value"),
    [
        ({"cost_usd": 3.0, "requests": 4}, "cost_per_request_usd", 0.75),
        ({"cost_usd": 3.0, "requests": 0}, "cost_per_request_usd", 3.0),
        ({"cost_usd": 3.0}, "cost_per_request_usd", 3.0),
        ({"input_tokens": 0, "output_tokens": 10}, "output_input_ratio", 10.0),
        ({"input_tokens": 4, "output_tokens": 10}, "output_input_ratio", 2.5),
        ({"errors": 5, "requests": 10}, "error_rate", 0.5),
        ({"errors": 0, "requests": 0}, "error_rate", 0.0),
        ({"cost_usd": 1.25}, "cost_usd", 1.25),
        ({}, "cost_usd", 0.0),
        ({}, "error_rate", 0.0),
    ],
)
def test_metric_value(metrics: dict[str, float], name: str, value: float) -> None:
    assert metric_value(metrics, name) == value


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
)
def test_error_rate_is_a_fraction(errors: int, extra: int) -> None:
    rate = metric_value({"errors": errors, "requests": errors + extra}, "error_rate")
    assert 0.0 <= rate <= 1.0


# --- crosses and evaluate_rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "observed", "hit"),
    [
        (">", 9.999, False),
        (">", 10.0, False),
        (">", 10.001, True),
        (">=", 9.999, False),
        (">=", 10.0, True),
        (">=", 10.001, True),
    ],
)
def test_crosses_at_the_boundary(
    rule_factory: RuleFactory, op: str, observed: float, hit: bool
) -> None:
    rule = rule_factory(op=op, threshold=10)
    assert crosses(rule, observed) is hit
    windows: dict[WindowRead, dict[str, float]] = {
        ("acme", Scope.tenant, "acme", "1h"): {"cost_usd": observed, "requests": 1}
    }
    hits = evaluate_rules(rule_set(rule), windows)
    assert len(hits) == (1 if hit else 0)


def test_evaluate_rules_hit_carries_everything(rule_factory: RuleFactory) -> None:
    rule = rule_factory(metric="cost_per_request_usd", threshold=0.5)
    metrics = {"cost_usd": 3.0, "requests": 4}
    hits = evaluate_rules(rule_set(rule), {("acme", Scope.tenant, "acme", "1h"): metrics})
    assert len(hits) == 1
    hit = hits[0]
    assert hit.rule is rule
    assert (hit.tenant_id, hit.scope, hit.entity_id) == ("acme", Scope.tenant, "acme")
    assert hit.observed == 0.75
    assert hit.metrics == metrics


def test_evaluate_rules_matches_scope_and_window(rule_factory: RuleFactory) -> None:
    rule = rule_factory(scope="user", window="5m", threshold=1)
    hot = {"cost_usd": 100.0, "requests": 1}
    windows: dict[WindowRead, dict[str, float]] = {
        ("acme", Scope.user, "u1", "1h"): hot,  # wrong window
        ("acme", Scope.tenant, "acme", "5m"): hot,  # wrong scope
        ("acme", Scope.user, "u2", "5m"): hot,
    }
    hits = evaluate_rules(rule_set(rule), windows)
    assert [h.entity_id for h in hits] == ["u2"]


@pytest.mark.parametrize(("requests", "hit"), [(49, False), (50, True), (51, True)])
def test_min_requests(rule_factory: RuleFactory, requests: int, hit: bool) -> None:
    rule = rule_factory(metric="error_rate", op=">=", threshold=0.5, min_requests=50)
    metrics = {"errors": requests, "requests": requests}
    hits = evaluate_rules(rule_set(rule), {("acme", Scope.tenant, "acme", "1h"): metrics})
    assert bool(hits) is hit


def test_min_requests_treats_missing_requests_as_zero(rule_factory: RuleFactory) -> None:
    rule = rule_factory(min_requests=1, threshold=0)
    hits = evaluate_rules(rule_set(rule), {("acme", Scope.tenant, "acme", "1h"): {"cost_usd": 5}})
    assert hits == []


def test_every_rule_that_crosses_hits(rule_factory: RuleFactory) -> None:
    rules = rule_set(
        rule_factory(id="low", threshold=1),
        rule_factory(id="high", threshold=100),
        rule_factory(id="mid", threshold=10, action="block"),
    )
    hits = evaluate_rules(rules, {("acme", Scope.tenant, "acme", "1h"): {"cost_usd": 50.0}})
    assert [h.rule.id for h in hits] == ["low", "mid"]


def test_zero_threshold_with_gt_needs_some_spend(rule_factory: RuleFactory) -> None:
    rule = rule_factory(threshold=0)
    target: WindowRead = ("acme", Scope.tenant, "acme", "1h")
    assert evaluate_rules(rule_set(rule), {target: {"cost_usd": 0.0}}) == []
    assert len(evaluate_rules(rule_set(rule), {target: {"cost_usd": 0.000001}})) == 1


def test_budget_fractions_at_the_exact_boundary() -> None:
    rs = parse_rules(
        "budgets: [{id: b, scope: user, period: day, amount_usd: 10, alert_at: [1.0, 0.5]}]",
        "t.yaml",
    )
    assert rs.budgets[0].alert_at == [0.5, 1.0]

    def crossed(spent: float) -> list[tuple[float, ...]]:
        reads = {("acme", Scope.user, "u1", "today"): {"cost_usd": spent}}
        return [h.crossed for h in evaluate_budgets(rs, reads)]

    assert crossed(4.999999) == []
    assert crossed(5.0) == [(0.5,)]
    assert crossed(9.999999) == [(0.5,)]
    assert crossed(10.0) == [(0.5, 1.0)]
    # Another scope's or window's figures are not this budget's business.
    assert evaluate_budgets(rs, {("acme", Scope.tenant, "acme", "today"): {"cost_usd": 99}}) == []
