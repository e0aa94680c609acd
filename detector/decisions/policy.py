"""Pure policy: rule hits in, decisions and alerts out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from detector.anomaly.schema import AnomalyRule, OutlierRule
from detector.rules.engine import BudgetHit, RuleHit
from detector.rules.schema import AbuseRule, BudgetRule, GrowthRule, RuleSet, ThresholdRule
from detector.schemas import Action, Alert, AlertKind, Decision, Scope, Severity, Strictness
from detector.timefmt import rfc3339
from detector.windows.buckets import calendar_end_ms

STRICTNESS = {
    Action.allow: Strictness.allow,
    Action.alert: Strictness.allow,
    Action.throttle: Strictness.throttle,
    Action.block: Strictness.block,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one hit leads to: an alert, and a decision when the rule enforces one."""

    alert: Alert
    decision: Decision | None


def decide(rules: RuleSet, hits: list[RuleHit], event_time_ms: int, now_ms: int) -> list[Outcome]:
    """Turn hits into alerts and decisions; allow-listed entities get alerts but no decision."""
    out = []
    for hit in hits:
        rule = hit.rule
        until_ms = now_ms + rule.for_s * 1000
        enforce = rule.action in (Action.throttle, Action.block)
        allowed = rules.allowed(hit.scope, hit.entity_id)
        decision = None
        if enforce and not allowed:
            decision = _decision(rule, hit.tenant_id, hit.scope, hit.entity_id, until_ms,
                                 explain(hit), now_ms)  # fmt: skip
        out.append(Outcome(_alert(hit, decision, allowed, event_time_ms, now_ms), decision))
    return out


Enforcing = ThresholdRule | GrowthRule | AbuseRule | BudgetRule | AnomalyRule | OutlierRule


def _decision(
    rule: Enforcing,
    tenant: str,
    scope: Scope,
    entity: str,
    until_ms: int,
    reason: str,
    now_ms: int,
) -> Decision:
    """The decision a rule or budget takes for an entity until `until_ms`."""
    return Decision(
        tenant_id=tenant,
        scope=scope,
        entity_id=entity,
        action=rule.action,
        until=rfc3339(until_ms),
        until_ms=until_ms,
        rule_id=rule.id,
        reason=reason,
        decided_at=rfc3339(now_ms),
        shadow=rule.shadow,
        retry_after_s=rule.retry_after_s,
        rate_per_min=rule.rate_per_min,
    )


def _consequence(rule: Enforcing, decision: Decision | None) -> str:
    """What an alert's message adds about the decision taken, or that shadow mode withheld."""
    if decision is None:
        return ""
    if rule.shadow:
        return f" (shadow: would have applied {rule.action.value})"
    return f"; {rule.action.value} until {decision.until}"


MANUAL_RULE_ID = "manual"
PERIOD_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}


def manual_decision(
    tenant: str,
    scope: Scope,
    entity: str,
    action: Action,
    duration_s: int,
    reason: str,
    actor: str,
    now_ms: int,
) -> Decision:
    """An operator's override: `action` for `entity` during `duration_s`, with the reason.

    >>> d = manual_decision("acme", Scope.user, "u1", Action.allow, 60, "VIP demo", "cli", 0)
    >>> (d.action.value, d.until, d.source, d.rule_id)
    ('allow', '1970-01-01T00:01:00.000Z', 'manual', 'manual')
    """
    if action is Action.alert:
        raise ValueError("an override is allow, throttle or block")
    until_ms = now_ms + duration_s * 1000
    return Decision(
        tenant_id=tenant,
        scope=scope,
        entity_id=entity,
        action=action,
        until=rfc3339(until_ms),
        until_ms=until_ms,
        rule_id=MANUAL_RULE_ID,
        reason=reason,
        decided_at=rfc3339(now_ms),
        source="manual",
        actor=actor,
    )


def lift_record(
    tenant: str, scope: Scope, entity: str, reason: str, actor: str, now_ms: int
) -> Decision:
    """The audit entry of lifting whatever is in force for an entity, now."""
    return Decision(
        tenant_id=tenant,
        scope=scope,
        entity_id=entity,
        action=Action.allow,
        until=rfc3339(now_ms),
        until_ms=now_ms,
        rule_id=MANUAL_RULE_ID,
        reason=reason,
        decided_at=rfc3339(now_ms),
        source="manual",
        actor=actor,
        lifted=True,
    )


def budget_outcome(
    rules: RuleSet, hit: BudgetHit, fraction: float, event_time_ms: int, now_ms: int
) -> Outcome:
    """Alert for a budget fraction reached; at the whole budget, its action until period end."""
    budget = hit.rule
    period_end_ms = calendar_end_ms(budget.window, event_time_ms, rules.zone(hit.tenant_id))
    enforce = fraction >= 1.0 and budget.action in (Action.throttle, Action.block)
    allowed = rules.allowed(hit.scope, hit.entity_id)
    share = f"{fraction:.0%}"
    reason = (
        f"{hit.scope.value} {hit.entity_id} has spent ${_number(hit.spent_usd)} of its "
        f"${_number(hit.amount_usd)} {PERIOD_ADJECTIVE[budget.period]} budget ({share} reached)"
    )
    decision = None
    if enforce and not allowed:
        decision = _decision(budget, hit.tenant_id, hit.scope, hit.entity_id, period_end_ms,
                             reason, now_ms)  # fmt: skip
    message = reason + _consequence(budget, decision)
    digest = hashlib.blake2b(
        f"{budget.id}|{hit.tenant_id}|{hit.scope}|{hit.entity_id}|{fraction}|{now_ms}".encode(),
        digest_size=8,
    ).hexdigest()
    alert = Alert(
        alert_id=digest,
        kind=AlertKind.budget,
        rule_id=budget.id,
        severity=budget.severity if fraction >= 1.0 else Severity.warning,
        tenant_id=hit.tenant_id,
        scope=hit.scope,
        entity_id=hit.entity_id,
        window=budget.window,
        metric="cost_usd",
        observed=round(hit.spent_usd, 6),
        threshold=round(fraction * hit.amount_usd, 6),
        action=budget.action if decision is not None else Action.alert,
        until=decision.until if decision else None,
        shadow=budget.shadow,
        event_time=rfc3339(event_time_ms),
        created_at=rfc3339(now_ms),
        message=message,
    )
    return Outcome(alert, decision)


def unpriced_alert(
    model: str, tenant_id: str, requests: int, event_time_ms: int, now_ms: int
) -> Alert:
    """Alert that a model has no price, so its calls count tokens but no dollars."""
    digest = hashlib.blake2b(f"unpriced|{model}|{now_ms}".encode(), digest_size=8).hexdigest()
    return Alert(
        alert_id=digest,
        kind=AlertKind.unpriced_model,
        rule_id="unpriced_model",
        severity=Severity.warning,
        tenant_id=tenant_id,
        scope=Scope.model,
        entity_id=model,
        window="today",
        metric="unpriced_requests",
        observed=requests,
        action=Action.alert,
        event_time=rfc3339(event_time_ms),
        created_at=rfc3339(now_ms),
        message=(
            f"model {model} has no price: {requests} call(s) (first seen for tenant {tenant_id}) "
            "are counted with tokens but $0; add it to the file in DETECTOR_PRICES_FILE"
        ),
    )


def explain(hit: RuleHit) -> str:
    """One line saying what crossed what.

    >>> from detector.rules.loader import parse_rules
    >>> rs = parse_rules("rules: [{id: r1, scope: tenant, metric: cost_usd, window: 1h, "
    ...                  "threshold: 50}]", "t.yaml")
    >>> explain(RuleHit(rs.rules[0], "acme", Scope.tenant, "acme", 72.5, {}))
    'cost_usd over 1h is 72.5 (> 50) for tenant acme'
    """
    rule = hit.rule
    if isinstance(rule, AbuseRule):
        limit = _number(hit.limit or 0)
        new = f"new {hit.scope.value} (first seen less than {rule.new_within_s}s ago)"
        what = {
            "runaway_session": "runaway session",
            "new_entity_burst": new,
            "shared_key": "shared API key",
        }[rule.pattern]
        over = (
            f"{hit.figure} over {rule.window}"
            if hit.figure in ("requests", "cost_usd")
            else (f"{hit.figure} over {rule.window} (hourly counts)")
        )
        return (
            f"{what}: {over} is {_number(hit.observed)} (> {limit}) for "
            f"{hit.scope.value} {hit.entity_id}"
        )
    if isinstance(rule, GrowthRule):
        ratio = hit.observed / hit.baseline if hit.baseline else 0.0
        return (
            f"{rule.metric} over {rule.window} is {_number(hit.observed)}, {ratio:.1f}x the "
            f"{_number(hit.baseline or 0)} of {rule.compared_to} earlier (limit "
            f"{_number(rule.factor)}x) for {hit.scope.value} {hit.entity_id}"
        )
    return (
        f"{rule.metric} over {rule.window} is {_number(hit.observed)} "
        f"({rule.op.value} {_number(rule.threshold)}) for {hit.scope.value} {hit.entity_id}"
    )


def _number(value: float) -> str:
    """A figure for people: plain decimals, at most six places, no exponent.

    >>> _number(1234567.891), _number(20.04881234), _number(50.0)
    ('1234567.891', '20.048812', '50')
    """
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _alert(
    hit: RuleHit, decision: Decision | None, allowed: bool, event_time_ms: int, now_ms: int
) -> Alert:
    rule = hit.rule
    action = rule.action if decision is not None else Action.alert
    digest = hashlib.blake2b(
        f"{rule.id}|{hit.tenant_id}|{hit.scope}|{hit.entity_id}|{now_ms}".encode(), digest_size=8
    ).hexdigest()
    message = explain(hit) + _consequence(rule, decision)
    if decision is None and allowed and rule.action is not Action.alert:
        message += f" (allow-listed: {rule.action.value} not applied)"
    if isinstance(rule, AbuseRule):
        kind, metric, threshold = AlertKind.abuse, hit.figure, hit.limit
    elif isinstance(rule, GrowthRule):
        kind, metric = AlertKind.rule, rule.metric
        threshold = round(rule.factor * (hit.baseline or 0), 6)
    else:
        kind, metric, threshold = AlertKind.rule, rule.metric, rule.threshold
    return Alert(
        alert_id=digest,
        kind=kind,
        rule_id=rule.id,
        severity=rule.severity,
        tenant_id=hit.tenant_id,
        scope=hit.scope,
        entity_id=hit.entity_id,
        window=rule.window,
        metric=metric,
        observed=round(hit.observed, 6),
        threshold=threshold,
        expected=hit.baseline,
        action=action,
        until=decision.until if decision else None,
        shadow=rule.shadow,
        event_time=rfc3339(event_time_ms),
        created_at=rfc3339(now_ms),
        message=message,
    )
