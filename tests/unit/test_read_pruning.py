"""Skipping entity reads that their tenant's sums rule out never changes what fires."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.rules.engine import (
    AbuseFacts,
    WindowRead,
    bound_reads,
    evaluate_abuse,
    evaluate_budgets,
    evaluate_rules,
    prune_reads,
    reads_needed,
)
from detector.rules.loader import parse_rules
from detector.schemas import Scope

# Every kind of rule that reads entity windows, with limits that the sums below straddle.
RULES = parse_rules(
    """
rules:
  - {id: user-cost, scope: user, metric: cost_usd, window: 1h, threshold: 25}
  - {id: user-req, scope: user, metric: requests, window: 5m, op: ">=", threshold: 40,
     min_requests: 10}
  - {id: user-ratio, scope: user, metric: cost_per_request_usd, window: 1h, threshold: 2}
  - {id: key-day, scope: api_key, metric: output_tokens, window: 1d, threshold: 5000}
  - {id: chat, scope: feature, metric: cost_usd, window: 1h, threshold: 12,
     where: {model: gpt-4o}}
  - {id: model-growth, kind: growth, scope: model, window: 1h, vs: 1h, factor: 3, min_base: 4}
  - {id: runaway, kind: abuse, pattern: runaway_session, window: 5m, max_requests: 30,
     max_cost_usd: 20}
  - {id: burst, kind: abuse, pattern: new_entity_burst, scope: user, window: 1h,
     max_cost_usd: 15}
  - {id: tenant-cost, scope: tenant, metric: cost_usd, window: 1h, threshold: 50}
budgets:
  - {id: user-month, scope: user, period: month, amount_usd: 40, overrides: {u1: 4}}
""",
    "test.yaml",
)
TENANTS = ("t1", "t2")
ENTITIES = {
    Scope.user: ("u1", "u2", "u3"),
    Scope.api_key: ("k1",),
    Scope.feature: ("chat",),
    Scope.model: ("gpt-4o", "o3"),
    Scope.session: ("s1", "s2"),
}
METRICS = ("cost_usd", "requests", "output_tokens")


@st.composite
def world(draw: st.DrawFn) -> tuple[list[WindowRead], dict[WindowRead, dict[str, float]]]:
    """Reads for every touched entity and sums for each: an entity's sums are a fraction of
    its tenant's over the same window (filtered and earlier windows too)."""
    touched = [(t, Scope.tenant, t) for t in TENANTS] + [
        (t, scope, e) for t in TENANTS for scope, ids in ENTITIES.items() for e in ids
    ]
    reads = reads_needed(RULES, touched)
    tenant_sums: dict[tuple[str, str], dict[str, float]] = {}
    sums: dict[WindowRead, dict[str, float]] = {}
    for read in [*reads, *bound_reads(RULES, reads)]:
        tenant, scope, _, window = read
        base = window.partition("#")[0].partition("@")[0]
        if (tenant, base) not in tenant_sums:
            tenant_sums[(tenant, base)] = {
                m: draw(st.floats(0, 120, allow_nan=False)) for m in METRICS
            }
        top = tenant_sums[(tenant, base)]
        if scope is Scope.tenant and window == base:
            sums[read] = top
        elif "@" in window:  # an earlier window is bounded by nothing: any share, even above
            share = draw(st.sampled_from([0.0, 0.1, 0.3, 1.0, 2.0]))
            sums[read] = {m: v * share for m, v in top.items()}
        else:
            share = draw(st.sampled_from([0.0, 0.3, 1.0]))
            sums[read] = {m: v * share for m, v in top.items()}
    return reads, sums


def fired(sums: Mapping[WindowRead, Mapping[str, float]]) -> set[tuple[str, str, str]]:
    facts = AbuseFacts({(t, s, e): 0 for t, s, e, _ in sums}, {})
    hits = evaluate_rules(RULES, sums) + evaluate_abuse(RULES, sums, facts, now_ms=1)
    out = {(h.rule.id, h.tenant_id, h.entity_id) for h in hits}
    out |= {(h.rule.id, h.tenant_id, h.entity_id) for h in evaluate_budgets(RULES, sums)}
    return out


@settings(max_examples=300, deadline=None)
@given(world())
def test_pruned_reads_fire_the_same_rules(
    case: tuple[list[WindowRead], dict[WindowRead, dict[str, float]]],
) -> None:
    reads, all_sums = case
    bounds = {r: all_sums[r] for r in bound_reads(RULES, reads)}
    first = {r: all_sums[r] for r in reads if r[1] in (Scope.tenant, Scope.global_)}
    kept = prune_reads(RULES, [r for r in reads if r not in first], bounds)
    pruned = {**first, **bounds, **{r: all_sums[r] for r in kept}}
    assert fired(pruned) == fired({r: all_sums[r] for r in reads})


def test_pruning_skips_entities_of_quiet_tenants() -> None:
    reads = reads_needed(RULES, [("t1", Scope.user, "u2"), ("t1", Scope.session, "s1")])
    quiet = {r: {"cost_usd": 1.0, "requests": 3.0} for r in bound_reads(RULES, reads)}
    kept = prune_reads(RULES, reads, quiet)
    # Only the ratio rule's read survives: a tenant's cost per request bounds nothing.
    assert kept == [("t1", Scope.user, "u2", "1h")]
    busy = {r: {"cost_usd": 100.0, "requests": 300.0} for r in quiet}
    assert prune_reads(RULES, reads, busy) == reads


def test_shared_key_rules_read_no_windows() -> None:
    rules = parse_rules(
        "rules: [{id: s, kind: abuse, pattern: shared_key, window: 1h, max_users: 5}]", "t.yaml"
    )
    assert reads_needed(rules, [("t1", Scope.api_key, "k1")]) == []


def test_growth_read_kept_when_the_tenant_leaves_room() -> None:
    reads = reads_needed(RULES, [("t1", Scope.model, "o3")])
    current, earlier = reads
    bounds = {r: {"cost_usd": 20.0} for r in bound_reads(RULES, reads)}
    # 20 >= 3 x 5 and 5 >= min_base 4: the model can have grown although its tenant spent 20.
    sums = {**bounds, current: {"cost_usd": 20.0}, earlier: {"cost_usd": 5.0}}
    assert {h.rule.id for h in evaluate_rules(RULES, sums)} == {"model-growth"}
    assert prune_reads(RULES, reads, bounds) == reads
    low = {r: {"cost_usd": 11.9} for r in bounds}  # under 3 x 4: no earlier figure allows it
    assert prune_reads(RULES, reads, low) == []
