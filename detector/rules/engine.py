"""Pure rule evaluation: window metrics of touched entities in, rule hits out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from detector.rules.schema import (
    BASE_METRICS,
    AbuseRule,
    BudgetRule,
    Comparison,
    GrowthRule,
    RuleSet,
    ThresholdRule,
)
from detector.schemas import Scope
from detector.windows.counters import NESTED_FIELDS


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule crossed for one entity."""

    rule: ThresholdRule | GrowthRule | AbuseRule
    tenant_id: str
    scope: Scope
    entity_id: str
    observed: float
    metrics: Mapping[str, float]
    baseline: float | None = None  # a growth rule's figure one period earlier
    figure: str = ""  # an abuse pattern's figure that crossed its limit
    limit: float | None = None  # ... and that limit


@dataclass(frozen=True, slots=True)
class BudgetHit:
    """An entity's period spend at or past some of its budget's alert fractions."""

    rule: BudgetRule
    tenant_id: str
    scope: Scope
    entity_id: str
    spent_usd: float
    amount_usd: float
    crossed: tuple[float, ...]  # the alert fractions reached, ascending


Target = tuple[str, Scope, str]  # tenant, scope, entity
WindowRead = tuple[str, Scope, str, str]  # tenant, scope, entity, window


def reads_needed(rules: RuleSet, touched: Iterable[Target]) -> list[WindowRead]:
    """Every window read the rules need for the touched entities, without repeats.

    >>> from detector.rules.loader import parse_rules
    >>> rs = parse_rules("rules: [{id: r, scope: tenant, metric: cost_usd, window: 1h, "
    ...                  "threshold: 1}]", "t.yaml")
    >>> reads_needed(rs, [("acme", Scope.tenant, "acme"), ("acme", Scope.user, "u1")])
    [('acme', <Scope.tenant: 'tenant'>, 'acme', '1h')]
    """
    windows_by_scope: dict[Scope, list[str]] = {}
    wanted = [
        (rule_scope(r), r.read_window if isinstance(r, ThresholdRule) else r.window)
        for r in rules.rules
        if not (isinstance(r, AbuseRule) and r.pattern == "shared_key")  # reads key reach only
    ]
    wanted += [(r.scope, r.earlier_window) for r in rules.rules if isinstance(r, GrowthRule)]
    wanted += [(b.scope, b.window) for b in rules.budgets]
    for scope, window in wanted:
        found = windows_by_scope.setdefault(scope, [])
        if window not in found:
            found.append(window)
    out: list[WindowRead] = []
    for tenant, scope, entity in sorted(set(touched)):
        for window in windows_by_scope.get(scope, ()):
            out.append((tenant, scope, entity, window))
    return out


# Scopes whose entities all lie inside one tenant: their window sums never exceed the tenant's.
NESTED_SCOPES = frozenset(scope for scope, _ in NESTED_FIELDS)
_ADDITIVE = frozenset(BASE_METRICS)

Sums = Mapping[str, float]
# Given a window name, the tenant's sums over it (or None when unknown): could the rule fire?
_Check = Callable[[str, Callable[[str], Sums | None]], bool]


def bound_reads(rules: RuleSet, reads: Iterable[WindowRead]) -> list[WindowRead]:
    """The tenant windows that bound the entity reads in `reads`, for `prune_reads`.

    Every event an entity counts is also counted by its tenant, in the same atomic write, the
    same buckets and the same filtered series or less. So an entity's sum of an additive metric
    is at most its tenant's over the same window. When the tenant's figure cannot cross a rule,
    no entity inside it can, and their reads are skipped.

    >>> from detector.rules.loader import parse_rules
    >>> rs = parse_rules("rules: [{id: r, scope: user, metric: cost_usd, window: 1h, "
    ...                  "threshold: 5}]", "t.yaml")
    >>> bound_reads(rs, [("acme", Scope.user, "u1", "1h"), ("acme", Scope.user, "u2", "1h")])
    [('acme', <Scope.tenant: 'tenant'>, 'acme', '1h')]
    """
    readers = _readers(rules)
    out: dict[WindowRead, None] = {}
    for tenant, scope, _, window in reads:
        if scope in NESTED_SCOPES:
            for bound_window in readers.get((scope, window), {}).values():
                for name in bound_window:
                    out[(tenant, Scope.tenant, tenant, name)] = None
    return list(out)


def prune_reads(
    rules: RuleSet, reads: Iterable[WindowRead], bounds: Mapping[WindowRead, Sums]
) -> list[WindowRead]:
    """`reads` without the entity reads that no rule could fire on, given the tenants' sums
    (read as `bound_reads` asked). A read whose bound is missing is kept.

    >>> from detector.rules.loader import parse_rules
    >>> rs = parse_rules("rules: [{id: r, scope: user, metric: cost_usd, window: 1h, "
    ...                  "threshold: 5}]", "t.yaml")
    >>> reads = [("a", Scope.user, "u1", "1h"), ("b", Scope.user, "u2", "1h")]
    >>> prune_reads(rs, reads, {("a", Scope.tenant, "a", "1h"): {"cost_usd": 4.0},
    ...                         ("b", Scope.tenant, "b", "1h"): {"cost_usd": 6.0}})
    [('b', <Scope.user: 'user'>, 'u2', '1h')]
    """
    readers = _readers(rules)
    out = []
    for read in reads:
        tenant, scope, entity, window = read
        checks = readers.get((scope, window)) if scope in NESTED_SCOPES else None
        if not checks:
            out.append(read)
            continue

        def bound(name: str, tenant: str = tenant) -> Sums | None:
            return bounds.get((tenant, Scope.tenant, tenant, name))

        if any(check(entity, bound) for check in checks):
            out.append(read)
    return out


def _readers(rules: RuleSet) -> dict[tuple[Scope, str], dict[_Check, tuple[str, ...]]]:
    """(scope, window read) -> the checks of every rule that uses that read, each with the
    tenant windows it needs. A check answers whether the rule could fire on an entity."""
    out: dict[tuple[Scope, str], dict[_Check, tuple[str, ...]]] = {}

    def add(scope: Scope, window: str, check: _Check, needs: tuple[str, ...]) -> None:
        out.setdefault((scope, window), {})[check] = needs

    for rule in rules.rules:
        if isinstance(rule, ThresholdRule):
            add(rule.scope, rule.read_window, _threshold_check(rule), (rule.window,))
        elif isinstance(rule, GrowthRule):
            check = _growth_check(rule)
            add(rule.scope, rule.window, check, (rule.window,))
            add(rule.scope, rule.earlier_window, check, (rule.window,))
        elif rule.pattern != "shared_key":
            add(rule.target_scope, rule.window, _abuse_check(rule), (rule.window,))
    for budget in rules.budgets:
        add(budget.scope, budget.window, _budget_check(budget), (budget.window,))
    return out


def _threshold_check(rule: ThresholdRule) -> _Check:
    def check(entity: str, bound: Callable[[str], Sums | None]) -> bool:
        sums = bound(rule.window)
        if sums is None or rule.metric not in _ADDITIVE:
            return True  # a ratio has no bound from its tenant's
        if sums.get("requests", 0.0) < rule.min_requests:
            return False
        return crosses(rule, sums.get(rule.metric, 0.0))

    return check


def _growth_check(rule: GrowthRule) -> _Check:
    def check(entity: str, bound: Callable[[str], Sums | None]) -> bool:
        sums = bound(rule.window)
        if sums is None or rule.metric not in _ADDITIVE:
            return True
        current = sums.get(rule.metric, 0.0)
        # grown() needs an earlier figure > 0 and >= min_base, and current >= factor * it.
        return current > 0 and current >= rule.factor * rule.min_base

    return check


def _abuse_check(rule: AbuseRule) -> _Check:
    def check(entity: str, bound: Callable[[str], Sums | None]) -> bool:
        sums = bound(rule.window)
        if sums is None:
            return True
        return (
            _over(
                ("requests", sums.get("requests", 0.0), rule.max_requests),
                ("cost_usd", sums.get("cost_usd", 0.0), rule.max_cost_usd),
            )
            is not None
        )

    return check


def _budget_check(budget: BudgetRule) -> _Check:
    first = min(budget.alert_at)

    def check(entity: str, bound: Callable[[str], Sums | None]) -> bool:
        sums = bound(budget.window)
        if sums is None:
            return True
        return sums.get("cost_usd", 0.0) >= first * budget.amount_for(entity)

    return check


def rule_scope(rule: ThresholdRule | GrowthRule | AbuseRule) -> Scope:
    """The kind of entity a rule watches."""
    return rule.target_scope if isinstance(rule, AbuseRule) else rule.scope


def metric_value(metrics: Mapping[str, float], name: str) -> float:
    """A base or derived metric from a window's sums.

    >>> metric_value({"cost_usd": 3.0, "requests": 4}, "cost_per_request_usd")
    0.75
    >>> metric_value({"input_tokens": 0, "output_tokens": 10}, "output_input_ratio")
    10.0
    """
    if name == "cost_per_request_usd":
        return metrics.get("cost_usd", 0.0) / max(metrics.get("requests", 0.0), 1.0)
    if name == "output_input_ratio":
        return metrics.get("output_tokens", 0.0) / max(metrics.get("input_tokens", 0.0), 1.0)
    if name == "error_rate":
        return metrics.get("errors", 0.0) / max(metrics.get("requests", 0.0), 1.0)
    return metrics.get(name, 0.0)


def crosses(rule: ThresholdRule, observed: float) -> bool:
    if rule.op is Comparison.ge:
        return observed >= rule.threshold
    return observed > rule.threshold


def evaluate_rules(
    rules: RuleSet, windows: Mapping[WindowRead, Mapping[str, float]]
) -> list[RuleHit]:
    """Hits of every rule on the entities whose windows were read."""
    hits: list[RuleHit] = []
    for (tenant, scope, entity, window), metrics in windows.items():
        for rule in rules.rules:
            if isinstance(rule, AbuseRule) or rule.scope is not scope:
                continue
            if (rule.read_window if isinstance(rule, ThresholdRule) else rule.window) != window:
                continue
            if isinstance(rule, GrowthRule):
                earlier = windows.get((tenant, scope, entity, rule.earlier_window))
                hit = grown(rule, metrics, earlier or {})
                if hit is not None:
                    observed, baseline = hit
                    hits.append(RuleHit(rule, tenant, scope, entity, observed, metrics, baseline))
                continue
            if metrics.get("requests", 0.0) < rule.min_requests:
                continue
            observed = metric_value(metrics, rule.metric)
            if crosses(rule, observed):
                hits.append(RuleHit(rule, tenant, scope, entity, observed, metrics))
    return hits


def grown(
    rule: GrowthRule, now: Mapping[str, float], earlier: Mapping[str, float]
) -> tuple[float, float] | None:
    """(current, earlier) figures when the metric grew by the rule's factor from a big enough
    base; None otherwise.

    >>> from detector.rules.loader import parse_rules
    >>> rs = parse_rules("rules: [{id: g, kind: growth, scope: tenant, window: 1d, vs: 1d, "
    ...                  "factor: 3, min_base: 10}]", "t.yaml")
    >>> grown(rs.rules[0], {"cost_usd": 31}, {"cost_usd": 10}), grown(
    ...     rs.rules[0], {"cost_usd": 5}, {"cost_usd": 0.01})
    ((31, 10), None)
    """
    current = metric_value(now, rule.metric)
    base = metric_value(earlier, rule.metric)
    if base <= 0 or base < rule.min_base:
        return None
    return (current, base) if current >= rule.factor * base else None


def evaluate_budgets(
    rules: RuleSet, windows: Mapping[WindowRead, Mapping[str, float]]
) -> list[BudgetHit]:
    """Budgets whose entities have spent at least their first alert fraction this period.

    >>> from detector.rules.loader import parse_rules
    >>> rs = parse_rules("budgets: [{id: b, scope: tenant, period: month, amount_usd: 100, "
    ...                  "overrides: {acme: 500}}]", "t.yaml")
    >>> [h.crossed for h in evaluate_budgets(rs, {("acme", Scope.tenant, "acme", "month"):
    ...                                          {"cost_usd": 420.0}})]
    [(0.5, 0.8)]
    """
    hits: list[BudgetHit] = []
    for (tenant, scope, entity, window), metrics in windows.items():
        for budget in rules.budgets:
            if budget.scope is not scope or budget.window != window:
                continue
            amount = budget.amount_for(entity)
            spent = metrics.get("cost_usd", 0.0)
            crossed = tuple(f for f in budget.alert_at if spent >= f * amount)
            if crossed:
                hits.append(BudgetHit(budget, tenant, scope, entity, spent, amount, crossed))
    return hits


@dataclass(frozen=True, slots=True)
class AbuseFacts:
    """What the abuse patterns need beyond window sums, fetched for the touched entities."""

    first_seen_ms: Mapping[Target, int | None]
    key_reach: Mapping[tuple[str, str], tuple[int, int]]  # (tenant, key) -> (users, tenants)


def evaluate_abuse(
    rules: RuleSet,
    windows: Mapping[WindowRead, Mapping[str, float]],
    facts: AbuseFacts,
    now_ms: int,
) -> list[RuleHit]:
    """Hits of the built-in abuse patterns on the touched entities."""
    hits: list[RuleHit] = []
    for rule in rules.rules:
        if not isinstance(rule, AbuseRule):
            continue
        if rule.pattern == "shared_key":
            for (tenant, key), (users, tenants) in facts.key_reach.items():
                crossed = _over(("distinct_users", users, rule.max_users),
                                ("distinct_tenants", tenants, rule.max_tenants))  # fmt: skip
                if crossed:
                    hits.append(_abuse_hit(rule, tenant, Scope.api_key, key, {}, crossed))
            continue
        for (tenant, scope, entity, window), metrics in windows.items():
            if scope is not rule.target_scope or window != rule.window:
                continue
            if rule.pattern == "runaway_session":
                crossed = _over(
                    ("requests", metrics.get("requests", 0.0), rule.max_requests),
                    ("cost_usd", metrics.get("cost_usd", 0.0), rule.max_cost_usd),
                )
            else:
                first = facts.first_seen_ms.get((tenant, scope, entity))
                if first is None or now_ms - first > rule.new_within_s * 1000:
                    continue
                crossed = _over(("cost_usd", metrics.get("cost_usd", 0.0), rule.max_cost_usd))
            if crossed:
                hits.append(_abuse_hit(rule, tenant, scope, entity, metrics, crossed))
    return hits


def _over(*checks: tuple[str, float, float | None]) -> tuple[str, float, float] | None:
    """The first (figure, value, limit) whose value is above its limit.

    >>> _over(("requests", 10, 50), ("cost_usd", 12.5, 10.0))
    ('cost_usd', 12.5, 10.0)
    """
    for name, value, limit in checks:
        if limit is not None and value > limit:
            return name, value, limit
    return None


def _abuse_hit(
    rule: AbuseRule,
    tenant: str,
    scope: Scope,
    entity: str,
    metrics: Mapping[str, float],
    crossed: tuple[str, float, float],
) -> RuleHit:
    figure, value, limit = crossed
    return RuleHit(rule, tenant, scope, entity, value, metrics, figure=figure, limit=limit)
