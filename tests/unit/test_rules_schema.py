from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from detector.rules.schema import RULE_METRICS, Comparison, RuleSet, ThresholdRule
from detector.schemas import Action, Scope, Severity

BASE: dict[str, Any] = {
    "id": "r1",
    "scope": "tenant",
    "metric": "cost_usd",
    "window": "1h",
    "threshold": 10,
}


def make_rule(**changes: Any) -> ThresholdRule:
    return ThresholdRule.model_validate({**BASE, **changes})


def test_defaults() -> None:
    rule = make_rule()
    assert rule.kind == "threshold"
    assert rule.op is Comparison.gt
    assert rule.action is Action.alert
    assert rule.for_s == 900
    assert rule.cooldown_s == 600
    assert rule.min_requests == 0
    assert rule.retry_after_s is None
    assert rule.severity is Severity.warning
    assert rule.shadow is False


@pytest.mark.parametrize(
    ("value", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400), (45, 45)]
)
def test_durations(value: object, seconds: int) -> None:
    rule = make_rule(**{"for": value, "cooldown": value})
    assert rule.for_s == seconds
    assert rule.cooldown_s == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be > 0s"),
        (-5, "must be > 0s"),
        ("0m", "must be > 0s"),
        (True, "must be a duration such as 30s, 15m, 1h or 1d"),
        (1.5, "must be a duration such as 30s, 15m, 1h or 1d"),
        ("soon", "must be a duration such as 30s, 15m, 1h or 1d"),
    ],
)
def test_bad_durations(value: object, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        make_rule(**{"for": value})
    errors = exc.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == ("for",)
    assert errors[0]["msg"] == f"Value error, {message}"


def test_for_s_is_not_an_accepted_spelling() -> None:
    with pytest.raises(ValidationError) as exc:
        make_rule(for_s=60)
    assert exc.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize("metric", RULE_METRICS)
def test_every_rule_metric_is_accepted(metric: str) -> None:
    assert make_rule(metric=metric).metric == metric


def test_every_window_metric_is_a_rule_metric() -> None:
    # A rule can watch calls without a price, or the drift between billed and table cost.
    assert make_rule(metric="unpriced_requests").metric == "unpriced_requests"
    assert make_rule(metric="billed_cost_usd").metric == "billed_cost_usd"
    with pytest.raises(ValidationError):
        make_rule(metric="dollars")


@pytest.mark.parametrize("action", ["alert", "throttle", "block"])
def test_global_rule_may_only_alert(action: str) -> None:
    if action == "alert":
        assert make_rule(scope="global", action=action).scope is Scope.global_
    else:
        with pytest.raises(ValidationError) as exc:
            make_rule(scope="global", action=action)
        assert exc.value.errors()[0]["msg"] == (
            "Value error, action: a global rule can only alert "
            f"(there is no entity to {action}), got '{action}'"
        )


def test_rules_are_frozen() -> None:
    rule = make_rule()
    with pytest.raises(ValidationError):
        rule.threshold = 5


def test_threshold_nan_is_refused_but_zero_is_fine() -> None:
    assert make_rule(threshold=0).threshold == 0
    with pytest.raises(ValidationError):
        make_rule(threshold=float("nan"))


def test_retry_after_must_be_positive() -> None:
    assert make_rule(retry_after_s=1).retry_after_s == 1
    with pytest.raises(ValidationError):
        make_rule(retry_after_s=0)


def test_rule_set_allowed() -> None:
    rules = RuleSet.model_validate({"allow_list": {"tenant": ["internal"], "user": ["vip"]}})
    assert rules.allowed(Scope.tenant, "internal")
    assert rules.allowed(Scope.user, "vip")
    assert not rules.allowed(Scope.user, "internal")
    assert not rules.allowed(Scope.tenant, "acme")
    assert not rules.allowed(Scope.session, "vip")


def test_rule_set_unique_ids() -> None:
    with pytest.raises(ValidationError) as exc:
        RuleSet.model_validate({"rules": [BASE, {**BASE, "scope": "user"}]})
    assert exc.value.errors()[0]["msg"] == (
        "Value error, rules[1].id: duplicate rule id 'r1' (first used by rules[0])"
    )


def test_rule_set_version_must_be_one() -> None:
    assert RuleSet.model_validate({"version": 1}).version == 1
    with pytest.raises(ValidationError):
        RuleSet.model_validate({"version": 2})
