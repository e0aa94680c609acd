"""Pure: an anomalous interval or an outlier call in, the alert (and decision) out.

Every anomaly alert says what was observed against what the model expected, the normal band,
the score, and which sub-dimensions (users, features, models, keys) drove it, ranked by the
dollars they spent above their own usual interval.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from detector.anomaly.detectors import Verdict
from detector.anomaly.intervals import ClosedInterval, Contributor
from detector.anomaly.outliers import OutlierHit
from detector.anomaly.schema import AnomalyRule, OutlierRule
from detector.decisions.policy import Outcome, _consequence, _decision, _number
from detector.rules.schema import RuleSet
from detector.schemas import Action, Alert, AlertKind, Decision, Scope
from detector.timefmt import rfc3339


@dataclass(frozen=True, slots=True)
class IntervalHit:
    interval: ClosedInterval
    verdict: Verdict
    contributors: list[Contributor]
    run_intervals: int = 1  # anomalous intervals in a row, this one included
    run_excess_usd: float = 0.0  # their spend above expected
    usual_call_usd: float | None = None  # the entity's usual cost per call
    usual_calls: float | None = None  # and calls per interval


def unit_note(hit: IntervalHit) -> str:
    """Cost per call and calls against their usual values: a dearer model shows in the first.

    >>> iv = ClosedInterval(("t", Scope.tenant, "t"), 0, 90_000, 20, {})
    >>> v = Verdict(1.0, 0.005, 0.0, 0.01, True)
    >>> unit_note(IntervalHit(iv, v, [], usual_call_usd=0.00027, usual_calls=19.2))
    '$0.0045 a call, usually $0.00027 (16.7x); 20 calls, usually 19.2'
    """
    iv = hit.interval
    if not iv.requests or hit.usual_call_usd is None or hit.usual_calls is None:
        return ""
    per_call = iv.cost_usd / iv.requests
    ratio = f" ({per_call / hit.usual_call_usd:.1f}x)" if hit.usual_call_usd > 0 else ""
    return (
        f"${_number(_sig(per_call))} a call, usually ${_number(_sig(hit.usual_call_usd))}{ratio}; "
        f"{iv.requests} calls, usually {_number(round(hit.usual_calls, 1))}"
    )


def run_note(hit: IntervalHit, window: str) -> str:
    """For an anomaly that lasts, how long and how much above expected so far.

    >>> iv = ClosedInterval(("t", Scope.tenant, "t"), 0, 90_000, 20, {})
    >>> run_note(IntervalHit(iv, Verdict(1.0, 0.005, 0.0, 0.01, True), [], 6, 0.51), "1m")
    '6 intervals of 1m in a row above normal, $0.51 above expected in all'
    """
    if hit.run_intervals < 2:
        return ""
    return (
        f"{hit.run_intervals} intervals of {window} in a row above normal, "
        f"${_number(round(hit.run_excess_usd, 2))} above expected in all"
    )


def _sig(value: float) -> float:
    """Round to two significant digits (a cost per call may be a fraction of a cent)."""
    return float(f"{value:.2g}")


def interval_outcome(rules: RuleSet, rule: AnomalyRule, hit: IntervalHit, now_ms: int) -> Outcome:
    """Alert (and decision, when the section enforces one) for one anomalous interval."""
    iv, v = hit.interval, hit.verdict
    tenant, scope, entity = iv.entity
    end_ms = iv.start_ms + rule.interval_s * 1000
    drivers = "; ".join(
        f"{c.scope.value} {c.entity_id} ${_number(round(c.cost_usd, 4))}"
        + (f" (usually ${_number(round(c.expected_usd, 4))})" if c.expected_usd is not None else "")
        for c in hit.contributors[:3]
    )
    reason = (
        f"{scope.value} {entity} spent ${_number(round(iv.cost_usd, 6))} in {rule.window} "
        f"({iv.requests} calls), expected ${_number(round(v.expected, 6))} "
        f"(normal up to ${_number(round(v.high, 6))}), anomaly score {v.score:.2f}"
        + "".join(f"; {n}" for n in (unit_note(hit), run_note(hit, rule.window)) if n)
        + (f"; driven by {drivers}" if drivers else "")
    )
    decision = _enforced(rules, rule, tenant, scope, entity, reason, now_ms)
    alert = Alert(
        alert_id=_digest(rule.id, tenant, scope, entity, iv.start_ms, now_ms),
        kind=AlertKind.anomaly,
        rule_id=rule.id,
        severity=rule.severity,
        tenant_id=tenant,
        scope=scope,
        entity_id=entity,
        window=rule.window,
        metric="cost_usd",
        observed=round(iv.cost_usd, 6),
        threshold=round(v.high, 6),
        expected=round(v.expected, 6),
        band=(round(v.low, 6), round(v.high, 6)),
        score=round(v.score, 4),
        contributors=[c.as_dict() for c in hit.contributors],
        action=rule.action if decision is not None else Action.alert,
        until=decision.until if decision else None,
        shadow=rule.shadow,
        event_time=rfc3339(end_ms),
        created_at=rfc3339(now_ms),
        message=reason + _consequence(rule, decision) + _allow_note(rules, rule, scope, entity),
    )
    return Outcome(alert, decision)


def outlier_outcome(
    rules: RuleSet,
    rule: OutlierRule,
    hit: OutlierHit,
    event_ts_ms: int,
    details: dict[str, str | float],
    now_ms: int,
) -> Outcome:
    """Alert (and decision) for one call far dearer than its entity's usual calls."""
    tenant, scope, entity = hit.entity
    ratio = hit.cost_usd / hit.typical_usd if hit.typical_usd > 0 else float("inf")
    what = ", ".join(f"{k} {v}" for k, v in details.items())
    reason = (
        f"one call by {scope.value} {entity} cost ${_number(round(hit.cost_usd, 6))}, "
        f"{ratio:.0f}x its typical ${_number(round(hit.typical_usd, 6))} "
        f"(usual calls up to ${_number(round(hit.limit_usd, 6))})" + (f": {what}" if what else "")
    )
    decision = _enforced(rules, rule, tenant, scope, entity, reason, now_ms)
    score = min(1.0, max(0.5, 1.0 - hit.limit_usd / (2 * hit.cost_usd)))
    alert = Alert(
        alert_id=_digest(rule.id, tenant, scope, entity, event_ts_ms, now_ms),
        kind=AlertKind.anomaly,
        rule_id=rule.id,
        severity=rule.severity,
        tenant_id=tenant,
        scope=scope,
        entity_id=entity,
        window="call",
        metric="cost_usd",
        observed=round(hit.cost_usd, 6),
        threshold=round(hit.limit_usd, 6),
        expected=round(hit.typical_usd, 6),
        band=(0.0, round(hit.limit_usd, 6)),
        score=round(score, 4),
        contributors=[{"scope": k, "id": str(v)} for k, v in details.items() if isinstance(v, str)],
        action=rule.action if decision is not None else Action.alert,
        until=decision.until if decision else None,
        shadow=rule.shadow,
        event_time=rfc3339(event_ts_ms),
        created_at=rfc3339(now_ms),
        message=reason + _consequence(rule, decision) + _allow_note(rules, rule, scope, entity),
    )
    return Outcome(alert, decision)


def _enforced(
    rules: RuleSet,
    rule: AnomalyRule | OutlierRule,
    tenant: str,
    scope: Scope,
    entity: str,
    reason: str,
    now_ms: int,
) -> Decision | None:
    if rule.action not in (Action.throttle, Action.block) or rules.allowed(scope, entity):
        return None
    return _decision(rule, tenant, scope, entity, now_ms + rule.for_s * 1000, reason, now_ms)


def _allow_note(rules: RuleSet, rule: AnomalyRule | OutlierRule, scope: Scope, entity: str) -> str:
    if rule.action is not Action.alert and rules.allowed(scope, entity):
        return f" (allow-listed: {rule.action.value} not applied)"
    return ""


def _digest(rule_id: str, tenant: str, scope: Scope, entity: str, at_ms: int, now_ms: int) -> str:
    text = f"{rule_id}|{tenant}|{scope.value}|{entity}|{at_ms}|{now_ms}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def describe(rule: AnomalyRule) -> str:
    """One line saying what the anomaly section runs.

    >>> for part in describe(AnomalyRule(scopes=["tenant"], outliers=None)).split(", "):
    ...     print(part)
    anomaly spend-anomaly: tenant every 1m
    detector robust at sensitivity 0.8
    pages from $0.5 in an interval or a run
    alert
    """
    scopes = ", ".join(s.value for s in rule.scopes)
    line = (
        f"anomaly {rule.id}: {scopes} every {rule.window}, detector {rule.detector} at "
        f"sensitivity {rule.sensitivity:g}, pages from ${_number(rule.min_spend_usd)} in an "
        f"interval or a run, {rule.action.value}" + (" (shadow)" if rule.shadow else "")
    )
    if not rule.enabled:
        line += " (disabled)"
    o = rule.outliers
    if o is not None and o.enabled:
        line += (
            f"; outliers {o.id}: calls over {o.factor:g}x usual on "
            f"{', '.join(s.value for s in o.scopes)}, from ${_number(o.min_cost_usd)}, "
            f"{o.action.value}" + (" (shadow)" if o.shadow else "")
        )
    return line
