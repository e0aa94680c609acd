from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from detector.decisions.policy import STRICTNESS, decide, explain
from detector.rules.engine import RuleHit
from detector.rules.schema import RuleSet, ThresholdRule
from detector.schemas import Action, AlertKind, Scope, Severity, Strictness
from detector.timefmt import rfc3339

NOW_MS = 1_700_000_000_000  # 2023-11-14T22:13:20.000Z
EVENT_MS = NOW_MS - 5_000

RuleFactory = Callable[..., ThresholdRule]


def make_rule(**fields: Any) -> ThresholdRule:
    data: dict[str, Any] = {
        "id": "r1",
        "scope": "user",
        "metric": "cost_usd",
        "window": "1h",
        "threshold": 25,
    }
    data.update(fields)
    return ThresholdRule.model_validate(data)


@pytest.fixture
def rule_factory() -> RuleFactory:
    return make_rule


def hit_for(rule: ThresholdRule, entity: str = "u1", observed: float = 30.0) -> RuleHit:
    return RuleHit(rule, "acme", rule.scope, entity, observed, {"cost_usd": observed})


def test_throttle_makes_a_decision_until_now_plus_for(rule_factory: RuleFactory) -> None:
    rule = rule_factory(action="throttle", **{"for": "30m"})
    [outcome] = decide(RuleSet(rules=[rule]), [hit_for(rule)], EVENT_MS, NOW_MS)
    decision = outcome.decision
    assert decision is not None
    assert decision.action is Action.throttle
    assert decision.until_ms == NOW_MS + 30 * 60 * 1000
    assert decision.until == "2023-11-14T22:43:20.000Z"
    assert decision.decided_at == "2023-11-14T22:13:20.000Z"
    assert (decision.tenant_id, decision.scope, decision.entity_id) == ("acme", Scope.user, "u1")
    assert decision.rule_id == "r1"
    assert decision.reason == "cost_usd over 1h is 30 (> 25) for user u1"
    assert decision.shadow is False
    alert = outcome.alert
    assert alert.action is Action.throttle
    assert alert.until == decision.until
    assert alert.message == (
        "cost_usd over 1h is 30 (> 25) for user u1; throttle until 2023-11-14T22:43:20.000Z"
    )


def test_block_decision(rule_factory: RuleFactory) -> None:
    rule = rule_factory(action="block", severity="critical", **{"for": "15m"})
    [outcome] = decide(RuleSet(rules=[rule]), [hit_for(rule)], EVENT_MS, NOW_MS)
    assert outcome.decision is not None
    assert outcome.decision.action is Action.block
    assert outcome.decision.until_ms == NOW_MS + 900_000
    assert outcome.alert.severity is Severity.critical
    assert outcome.alert.action is Action.block


def test_alert_only_rule_makes_no_decision(rule_factory: RuleFactory) -> None:
    rule = rule_factory(action="alert")
    [outcome] = decide(RuleSet(rules=[rule]), [hit_for(rule)], EVENT_MS, NOW_MS)
    assert outcome.decision is None
    assert outcome.alert.action is Action.alert
    assert outcome.alert.until is None
    assert outcome.alert.message == "cost_usd over 1h is 30 (> 25) for user u1"


def test_shadow_rule_makes_a_shadow_decision(rule_factory: RuleFactory) -> None:
    rule = rule_factory(action="block", shadow=True, **{"for": "1h"})
    [outcome] = decide(RuleSet(rules=[rule]), [hit_for(rule)], EVENT_MS, NOW_MS)
    assert outcome.decision is not None
    assert outcome.decision.shadow is True
    assert outcome.decision.until_ms == NOW_MS + 3_600_000
    assert outcome.alert.shadow is True
    assert "would have" in outcome.alert.message
    assert outcome.alert.message == (
        "cost_usd over 1h is 30 (> 25) for user u1 (shadow: would have applied block)"
    )


def test_allow_listed_entity_gets_an_alert_but_no_decision(rule_factory: RuleFactory) -> None:
    rule = rule_factory(action="block")
    rules = RuleSet(rules=[rule], allow_list={Scope.user: ["vip"]})
    [outcome] = decide(rules, [hit_for(rule, entity="vip")], EVENT_MS, NOW_MS)
    assert outcome.decision is None
    assert outcome.alert.action is Action.alert
    assert outcome.alert.until is None
    assert outcome.alert.message == (
        "cost_usd over 1h is 30 (> 25) for user vip (allow-listed: block not applied)"
    )


def test_allow_list_is_per_scope(rule_factory: RuleFactory) -> None:
    rule = rule_factory(action="block")
    rules = RuleSet(rules=[rule], allow_list={Scope.tenant: ["vip"]})
    [outcome] = decide(rules, [hit_for(rule, entity="vip")], EVENT_MS, NOW_MS)
    assert outcome.decision is not None


def test_allow_listed_alert_rule_says_nothing_extra(rule_factory: RuleFactory) -> None:
    rule = rule_factory(action="alert")
    rules = RuleSet(rules=[rule], allow_list={Scope.user: ["vip"]})
    [outcome] = decide(rules, [hit_for(rule, entity="vip")], EVENT_MS, NOW_MS)
    assert outcome.alert.message == "cost_usd over 1h is 30 (> 25) for user vip"


def test_alert_fields(rule_factory: RuleFactory) -> None:
    rule = rule_factory(action="throttle", severity="info", window="5m", threshold=2.5)
    [outcome] = decide(RuleSet(rules=[rule]), [hit_for(rule, observed=3.1234567)], EVENT_MS, NOW_MS)
    alert = outcome.alert
    assert alert.kind is AlertKind.rule
    assert alert.rule_id == "r1"
    assert alert.severity is Severity.info
    assert (alert.tenant_id, alert.scope, alert.entity_id) == ("acme", Scope.user, "u1")
    assert (alert.window, alert.metric) == ("5m", "cost_usd")
    assert alert.observed == 3.123457
    assert alert.threshold == 2.5
    assert alert.event_time == rfc3339(EVENT_MS)
    assert alert.created_at == rfc3339(NOW_MS)
    assert len(alert.alert_id) == 16
    int(alert.alert_id, 16)  # hex


def test_alert_id_is_stable_and_distinct(rule_factory: RuleFactory) -> None:
    rule = rule_factory()
    rules = RuleSet(rules=[rule])
    first = decide(rules, [hit_for(rule)], EVENT_MS, NOW_MS)[0].alert.alert_id
    again = decide(rules, [hit_for(rule)], EVENT_MS, NOW_MS)[0].alert.alert_id
    later = decide(rules, [hit_for(rule)], EVENT_MS, NOW_MS + 1)[0].alert.alert_id
    other = decide(rules, [hit_for(rule, entity="u2")], EVENT_MS, NOW_MS)[0].alert.alert_id
    assert first == again
    assert len({first, later, other}) == 3


def test_one_outcome_per_hit_in_order(rule_factory: RuleFactory) -> None:
    alert_rule = rule_factory(id="a", action="alert")
    block_rule = rule_factory(id="b", action="block")
    rules = RuleSet(rules=[alert_rule, block_rule])
    hits = [hit_for(block_rule, "u1"), hit_for(alert_rule, "u2"), hit_for(block_rule, "u3")]
    outcomes = decide(rules, hits, EVENT_MS, NOW_MS)
    assert [o.alert.entity_id for o in outcomes] == ["u1", "u2", "u3"]
    assert [o.decision is not None for o in outcomes] == [True, False, True]


def test_no_hits_no_outcomes() -> None:
    assert decide(RuleSet(), [], EVENT_MS, NOW_MS) == []


def test_global_alert(rule_factory: RuleFactory) -> None:
    rule = rule_factory(scope="global", threshold=1000)
    [outcome] = decide(RuleSet(rules=[rule]), [hit_for(rule, "all", 1500)], EVENT_MS, NOW_MS)
    assert outcome.decision is None
    assert outcome.alert.scope is Scope.global_
    assert outcome.alert.message == "cost_usd over 1h is 1500 (> 1000) for global all"


@pytest.mark.parametrize(
    ("op", "observed", "text"),
    [
        (">", 72.5, "cost_usd over 1h is 72.5 (> 50) for user u1"),
        (">=", 50.0, "cost_usd over 1h is 50 (>= 50) for user u1"),
        (">", 50.1234564, "cost_usd over 1h is 50.123456 (> 50) for user u1"),
    ],
)
def test_explain(rule_factory: RuleFactory, op: str, observed: float, text: str) -> None:
    rule = rule_factory(op=op, threshold=50)
    assert explain(hit_for(rule, observed=observed)) == text


def test_strictness_order() -> None:
    assert STRICTNESS[Action.alert] is Strictness.allow
    assert STRICTNESS[Action.allow] < STRICTNESS[Action.throttle] < STRICTNESS[Action.block]
