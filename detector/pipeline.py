"""The whole flow for one batch of raw events, on one screen.

decode -> price -> windows (exactly once) -> rules -> decisions -> outputs (Kafka topics)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from detector.anomaly.watch import AnomalyWatch
from detector.config import Settings
from detector.decisions.policy import Outcome, budget_outcome, decide, unpriced_alert
from detector.decisions.store import Change, DecisionStore
from detector.errors import BadEvent
from detector.ingest.decode import decode_event
from detector.keys import GLOBAL_TENANT
from detector.pricing import PriceTable, price_event
from detector.rules.engine import (
    NESTED_SCOPES,
    AbuseFacts,
    WindowRead,
    bound_reads,
    evaluate_abuse,
    evaluate_budgets,
    evaluate_rules,
    prune_reads,
    reads_needed,
)
from detector.rules.schema import AbuseRule, RuleSet, ThresholdRule
from detector.schemas import Alert, Decision, Scope, UsageEvent
from detector.sinks.base import Outputs
from detector.windows.buckets import DAY_S, MAX_RETENTION_S, WINDOW_LENGTH_S, calendar_end_ms
from detector.windows.counters import (
    PricedEvent,
    ReachNeeds,
    Slot,
    WindowStore,
    series_slot,
)

log = logging.getLogger(__name__)

RawMessage = tuple[bytes | None, bytes]  # Kafka key, value


@dataclass(slots=True)
class Turn:
    """A batch's place among the batches a worker runs at once, for the one stage that must see
    them in the order they were started: the anomaly models follow each partition's event
    time, so a batch started later but done first would close intervals that the earlier batch
    still feeds (its events would then count in the windows but not in the models).

    >>> turns = Turns()
    >>> first, second = turns.next(), turns.next()
    >>> second.previous is first.done and first.previous is None
    True
    """

    previous: asyncio.Event | None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self) -> None:
        """Until every batch started before this one has passed the ordered stage."""
        if self.previous is not None:
            await self.previous.wait()


class Turns:
    """Hands out turns in the order batches start."""

    def __init__(self) -> None:
        self._last: asyncio.Event | None = None

    def next(self) -> Turn:
        turn = Turn(self._last)
        self._last = turn.done
        return turn


@dataclass(frozen=True)
class Deps:
    settings: Settings
    rules: Callable[[], RuleSet]  # the current rules; hot reload swaps what this returns
    prices: PriceTable
    windows: WindowStore
    decisions: DecisionStore
    kafka: Outputs  # the Kafka topics in the worker; a collector in a backtest
    anomaly: AnomalyWatch | None = None  # online anomaly models (rules.yaml `anomaly:`)


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    late: int = 0  # applied events older than the allowed lateness (short windows skipped)
    late_for_models: int = 0  # counted events whose anomaly interval had already closed
    dead_letters: list[tuple[bytes | None, bytes, BadEvent]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


async def handle_batch(
    messages: Sequence[RawMessage],
    deps: Deps,
    now_ms: int,
    sources: Sequence[int] | None = None,
    turn: Turn | None = None,
) -> BatchResult:
    """Count a batch exactly once, run the rules on what it touched, publish the outcome.

    `sources` gives each message's Kafka partition (all 0 when absent), so that the anomaly
    models follow event time per partition. With `turn`, batches running at once reach the
    anomaly models in the order they were started (the rest of the work overlaps freely)."""
    settings, result = deps.settings, BatchResult()
    priced: list[PricedEvent] = []
    origins = sources if sources is not None else [0] * len(messages)
    for (key, raw), source in zip(messages, origins, strict=True):
        try:
            event = decode_event(raw, now_ms, settings.max_future_skew_s, MAX_RETENTION_S)
        except BadEvent as exc:
            result.dead_letters.append((key, raw, exc))
            continue
        priced.append(PricedEvent(event, price_event(event, deps.prices), source))

    rules = deps.rules()
    # A counted cost event releases the reservation made under the same request id, in the
    # same atomic write as its counts.
    applied = await deps.windows.apply_batch(
        priced,
        now_ms,
        filtered_series(rules),
        rules.zone,
        reach_needs(rules),
        settle_holds=bool(rules.budgets),
    )
    result.applied, result.duplicates = len(applied.applied), len(applied.duplicates)
    late_before_ms = now_ms - settings.allowed_lateness_s * 1000
    result.late = sum(1 for it in applied.applied if it.event.ts_ms < late_before_ms)
    result.alerts.extend(await _unpriced_alerts(applied.applied, deps, now_ms))

    if applied.applied:
        # Rules read the windows at event time: the newest event of the batch, never the future.
        eval_ms = min(max(it.event.ts_ms for it in applied.applied), now_ms)
        targets: list[tuple[str, Scope, str]] = list(applied.touched)
        sums = await _read_sums(rules, deps, reads_needed(rules, targets), eval_ms)
        hits = evaluate_rules(rules, sums)
        if any(isinstance(r, AbuseRule) for r in rules.rules):
            # First-seen times and API key reach came back with the counts.
            facts = AbuseFacts(applied.first_seen, applied.key_reach)
            hits += evaluate_abuse(rules, sums, facts, eval_ms)
        outcomes = decide(rules, hits, eval_ms, now_ms)
        alerting = [
            o
            for o in outcomes
            if await deps.decisions.claim_alert(
                o.alert.tenant_id,
                o.alert.rule_id,
                o.alert.scope,
                o.alert.entity_id,
                _cooldown_s(rules, o.alert.rule_id),
                now_ms,
            )
        ]
        # Rule decisions are stored on every hit (a re-trigger extends them); budget outcomes
        # exist only when a fraction is reached for the first time in the period.
        budget_outcomes = await _budget_outcomes(rules, sums, deps, eval_ms, now_ms)
        enforced = [
            o.decision
            for o in (*outcomes, *budget_outcomes)
            if o.decision and not o.decision.shadow
        ]
        changes = await deps.decisions.save(enforced, now_ms)
        result.decisions = [d for d, c in zip(enforced, changes, strict=True) if c is Change.new]
        result.alerts.extend(o.alert for o in (*alerting, *budget_outcomes))

    if turn is not None and deps.anomaly is not None and rules.anomaly is not None:
        await turn.wait()
    if deps.anomaly is not None and applied.applied:
        found = await deps.anomaly.observe_batch(applied.applied, rules, now_ms)
        result.late_for_models = found.late_events
        result.alerts += found.alerts
        result.decisions += found.decisions
    if turn is not None:
        turn.done.set()

    await _publish(result, deps)
    return result


async def handle_idle(deps: Deps, now_ms: int) -> BatchResult:
    """No events for a while: score the anomaly intervals that are due by now. Intervals close
    on the slowest partition's event time, and a partition that stays quiet stops holding the
    others back only after a while (intervals.SOURCE_IDLE_MS), so without this the last
    minutes before a lull would wait for the next event."""
    result = BatchResult()
    if deps.anomaly is not None:
        found = await deps.anomaly.observe_batch([], deps.rules(), now_ms)
        result.alerts, result.decisions = found.alerts, found.decisions
        await _publish(result, deps)
    return result


async def _publish(result: BatchResult, deps: Deps) -> None:
    if result.dead_letters:
        await deps.kafka.send_dead_letters(result.dead_letters)
    if result.decisions:
        await deps.kafka.send_decisions(result.decisions)
    if result.alerts:
        await deps.kafka.send_alerts(result.alerts)


async def _read_sums(
    rules: RuleSet, deps: Deps, reads: list[WindowRead], eval_ms: int
) -> dict[WindowRead, dict[str, float]]:
    """The window sums the rules need, in two rounds: first the tenants' (and global) windows,
    then only the entity windows that their tenant's figures leave a chance to fire."""
    bounds = bound_reads(rules, reads)
    first = list(dict.fromkeys([*(r for r in reads if r[1] not in NESTED_SCOPES), *bounds]))
    read = deps.windows.read_windows
    sums = dict(zip(first, await read(first, eval_ms, rules.zone), strict=True))
    rest = prune_reads(rules, (r for r in reads if r[1] in NESTED_SCOPES), sums)
    if rest:
        sums.update(zip(rest, await read(rest, eval_ms, rules.zone), strict=True))
    return sums


async def _unpriced_alerts(items: list[PricedEvent], deps: Deps, now_ms: int) -> list[Alert]:
    """One alert per model without a price per UTC day, across all workers."""
    unpriced: dict[str, list[PricedEvent]] = {}
    for it in items:
        if not it.costs.priced:
            unpriced.setdefault(it.event.model, []).append(it)
    alerts = []
    until_midnight_s = DAY_S - (now_ms // 1000) % DAY_S
    for model, events in unpriced.items():
        if await deps.decisions.claim_alert(
            GLOBAL_TENANT, "unpriced_model", Scope.model, model, until_midnight_s, now_ms
        ):
            first = events[0].event
            alerts.append(unpriced_alert(model, first.tenant_id, len(events), first.ts_ms, now_ms))
    return alerts


def filtered_series(rules: RuleSet) -> Callable[[UsageEvent], list[Slot]] | None:
    """For rules with a `where`, the series (bucket group, entity) each matching event also
    counts under."""
    chosen = [r for r in rules.rules if isinstance(r, ThresholdRule) and r.series]

    def prefixes(event: UsageEvent) -> list[Slot]:
        out: list[Slot] = []
        for rule in chosen:
            entity = event.entity(rule.scope)
            if entity is not None and rule.series and rule.matches(event):
                owner = GLOBAL_TENANT if rule.scope is Scope.global_ else event.tenant_id
                out.append(series_slot(owner, rule.series, rule.scope, entity))
        return out

    return prefixes if chosen else None


def reach_needs(rules: RuleSet) -> ReachNeeds | None:
    """What the abuse rules need recorded with the counts: first-seen times of the entities
    `new_entity_burst` watches, distinct users and tenants of API keys for `shared_key`."""
    abuse = [r for r in rules.rules if isinstance(r, AbuseRule)]
    if not abuse:
        return None
    shared = [r for r in abuse if r.pattern == "shared_key"]
    return ReachNeeds(
        first_seen=frozenset(r.target_scope for r in abuse if r.pattern == "new_entity_burst"),
        key_users=any(r.max_users is not None for r in shared),
        key_tenants=any(r.max_tenants is not None for r in shared),
        key_window_s=max((WINDOW_LENGTH_S[r.window] for r in shared), default=0),
    )


async def _budget_outcomes(
    rules: RuleSet,
    sums: dict[WindowRead, dict[str, float]],
    deps: Deps,
    eval_ms: int,
    now_ms: int,
) -> list[Outcome]:
    """One outcome per budget and entity whose spend reached a new alert fraction.

    Each fraction is claimed once per period (across workers); when a batch reaches several at
    once, only the highest is announced.
    """
    out = []
    for hit in evaluate_budgets(rules, sums):
        end_ms = calendar_end_ms(hit.rule.window, eval_ms, rules.zone(hit.tenant_id))
        left_s = max((end_ms - eval_ms) // 1000, 1)
        newly = [
            fraction
            for fraction in hit.crossed
            if await deps.decisions.claim_alert(
                hit.tenant_id,
                f"{hit.rule.id}@{fraction:g}",
                hit.scope,
                hit.entity_id,
                left_s,
                now_ms,
            )
        ]
        if newly:
            out.append(budget_outcome(rules, hit, max(newly), eval_ms, now_ms))
    return out


def _cooldown_s(rules: RuleSet, rule_id: str) -> int:
    for rule in rules.rules:
        if rule.id == rule_id:
            return rule.cooldown_s
    return 600
