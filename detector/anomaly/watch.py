"""The live anomaly stage: fed each batch's newly counted events, in the worker and in a replay.

Per event it only adds the cost to open intervals and judges the call against its entity's
usual calls (cheap, in memory). When event time passes an interval's end, that interval is
scored for every entity that spent in it: the model judges it first and learns it only when it
looked normal; states are then written to Redis in one round trip. Anomalies become alerts
(with the cooldown kept in Redis, as for rules) and, when the section says so, decisions
stored through the same decision store as rules.
"""

from __future__ import annotations

import logging
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from detector.anomaly.detectors import UnivariateDetector, make_univariate
from detector.anomaly.explain import IntervalHit, interval_outcome, outlier_outcome
from detector.anomaly.intervals import (
    ClosedInterval,
    EntityKey,
    IntervalBook,
    group_by_entity,
    rank_contributors,
)
from detector.anomaly.outliers import OutlierHit, OutlierWatch
from detector.anomaly.schema import AnomalyRule, OutlierRule
from detector.anomaly.state import STATE_VERSION, EntityState, ModelStore
from detector.anomaly.univariate import BAND_WARMUP
from detector.decisions.policy import Outcome
from detector.decisions.store import Change, DecisionStore
from detector.redis_client import RedisClient
from detector.rules.schema import RuleSet
from detector.schemas import Alert, Decision, Scope
from detector.windows.counters import PricedEvent

log = logging.getLogger(__name__)

MAX_IN_MEMORY_MODELS = 100_000  # per worker; the least recently used are dropped (Redis keeps them)


@dataclass
class Findings:
    alerts: list[Alert] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)  # new decisions, to publish
    late_events: int = 0  # events of the batch whose interval had already closed


@dataclass
class WatchStats:
    intervals_scored: int = 0
    anomalous: int = 0
    outliers: int = 0
    over_cap: int = 0  # entities refused a model because their tenant was at max_models
    state_bytes_written: int = 0
    index_reads: int = 0  # entities whose state was checked against Redis's index


def signature(rule: AnomalyRule) -> str:
    """The settings a model depends on; a model built under other settings is not reused."""
    # STATE_VERSION: states pickled by an older build lack fields; they start afresh.
    return f"{STATE_VERSION}|{rule.detector}|{rule.sensitivity}|{rule.interval_s}|{rule.warmup}"


class AnomalyWatch:
    """Anomaly models of the entities this process sees, with their state in Redis."""

    def __init__(
        self,
        redis: RedisClient,
        decisions: DecisionStore,
        max_in_memory: int = MAX_IN_MEMORY_MODELS,
    ) -> None:
        self._store = ModelStore(redis)
        self._decisions = decisions
        self._max_in_memory = max_in_memory
        self._rule: AnomalyRule | None = None
        self._book: IntervalBook | None = None
        self._outliers: OutlierWatch | None = None
        self._states: OrderedDict[EntityKey, EntityState] = OrderedDict()
        # Entities whose state in memory this process has kept current since its partitions
        # last moved: no other worker can have learned on them meanwhile.
        self._current: set[EntityKey] = set()
        self._moves = 0  # times partitions were taken from this worker
        self._assigned: dict[int, int] = {}  # partition -> clock when it was assigned
        self.stats = WatchStats()

    def partitions_moved(self, partitions: Iterable[int] = ()) -> None:
        """Partitions were taken from this worker (a rebalance): another worker may learn on
        any entity from now on, so every state held is checked against Redis before use; and
        their event time no longer counts."""
        self._moves += 1
        self._current.clear()
        gone = set(partitions)
        for partition in gone:
            self._assigned.pop(partition, None)
        if self._book is not None:
            self._book.leave(gone)

    def partitions_assigned(self, partitions: Iterable[int], now_ms: int) -> None:
        """Partitions given to this worker: the models' event time waits for each of them
        (until it delivers, or stays idle), so one read ahead does not close intervals the
        others still feed."""
        given = list(partitions)
        for partition in given:
            self._assigned[partition] = now_ms
        if self._book is not None:
            self._book.join(given, now_ms)

    async def observe_batch(
        self, items: Sequence[PricedEvent], rules: RuleSet, now_ms: int
    ) -> Findings:
        """Take in a batch of newly counted events; score every interval that closed (event
        time is followed per source: each item's partition)."""
        rule = self._configure(rules)
        if rule is None or self._book is None:
            return Findings()
        book, outliers = self._book, self._outliers
        outlier_rule = rule.outliers
        outcomes: list[Outcome] = []
        late_before = book.late_events
        for it in items:
            cost_micros = it.costs.total_usd_micros
            book.add(it.event, cost_micros, now_ms, it.source)
            if outliers is None or outlier_rule is None:
                continue
            event = it.event
            for scope in outlier_rule.scopes:
                entity = event.entity(scope)
                if entity is None:
                    continue
                hit = outliers.observe((event.tenant_id, scope, entity), cost_micros / 1e6)
                if hit is not None:
                    self.stats.outliers += 1
                    outcomes.append(self._outlier(rules, outlier_rule, hit, it, now_ms))
        late = book.late_events - late_before
        closed = book.close_due(now_ms)
        if closed:
            outcomes += await self._score(rules, rule, closed, now_ms)
        found = await self._act(rules, rule, outcomes, now_ms)
        found.late_events = late
        return found

    async def flush(self, rules: RuleSet, now_ms: int) -> Findings:
        """Close and score every open interval (the end of a replay)."""
        rule = self._configure(rules)
        if rule is None or self._book is None:
            return Findings()
        closed = self._book.close_all()
        outcomes = await self._score(rules, rule, closed, now_ms) if closed else []
        return await self._act(rules, rule, outcomes, now_ms)

    @property
    def late_events(self) -> int:
        """Events whose interval had already closed when they came (counted in the windows,
        not in the models)."""
        return self._book.late_events if self._book is not None else 0

    def state_of(self, key: EntityKey) -> EntityState | None:
        """The in-memory state of one entity, if held (for tests and benches)."""
        return self._states.get(key)

    def _configure(self, rules: RuleSet) -> AnomalyRule | None:
        rule = rules.anomaly
        if rule is None or not rule.enabled:
            self._rule = None
            return None
        if self._rule is None or _book_changed(self._rule, rule) or self._book is None:
            old = self._book
            self._book = IntervalBook(rule.scopes, rule.interval_s, rule.grace_s)
            if old is not None:
                self._book.sources = old.sources
                self._book.closed_before_ms = old.closed_before_ms
            else:
                for partition, since_ms in self._assigned.items():
                    self._book.join([partition], since_ms)
        o = rule.outliers
        if o is None or not o.enabled:
            self._outliers = None
        elif (
            self._outliers is None
            or self._rule is None
            or self._rule.outliers is None
            or _outliers_changed(self._rule.outliers, o)
        ):
            self._outliers = OutlierWatch(o.factor, o.min_cost_usd, o.warmup, o.max_entities)
        self._rule = rule
        return rule

    def _outlier(
        self, rules: RuleSet, rule: OutlierRule, hit: OutlierHit, it: PricedEvent, now_ms: int
    ) -> Outcome:
        ev = it.event
        details: dict[str, str | float] = {"model": ev.model}
        for name, value in (
            ("user", ev.user_id),
            ("feature", ev.feature),
            ("api_key", ev.api_key_id),
            ("session", ev.session_id),
        ):
            if value is not None and name != hit.entity[1].value:
                details[name] = value
        details["input_tokens"] = float(ev.input_tokens)
        details["output_tokens"] = float(ev.output_tokens + ev.reasoning_tokens)
        return outlier_outcome(rules, rule, hit, ev.ts_ms, details, now_ms)

    async def _score(
        self, rules: RuleSet, rule: AnomalyRule, closed: list[ClosedInterval], now_ms: int
    ) -> list[Outcome]:
        groups = group_by_entity(closed)
        moves = self._moves
        await self._ready_states(rule, groups, now_ms)
        # A batch that was running when partitions moved may judge entities of a partition
        # now elsewhere: those states are not known to be current, so none is marked so.
        current = self._current if self._moves == moves else set()
        sig = signature(rule)
        hits: list[IntervalHit] = []
        changed: dict[EntityKey, EntityState] = {}
        for key, intervals in groups.items():
            state = self._states.get(key)
            if state is None:
                continue  # over its tenant's cap
            for iv in intervals:
                if iv.start_ms <= state.last_start_ms:
                    continue  # this model already saw it (another worker, before a move)
                hit = _judge(rule, state, iv)
                if hit is not None:
                    hits.append(hit)
                state.last_start_ms = iv.start_ms
                state.unsaved += 1
            state.signature = sig
            current.add(key)
            if state.unsaved >= rule.persist_every:
                changed[key] = state
        self.stats.intervals_scored += len(closed)
        self.stats.anomalous += len(hits)
        self.stats.state_bytes_written += await self._store.save(changed, rule.idle_expiry_s)
        out = []
        paging = {key[0] for key in groups if key[1] is Scope.tenant and self._paging(key)}
        for hit in _fold_into_tenants(hits, paging):
            state = self._states.get(hit.interval.entity)
            usual = {k: state.usual_usd(k) for k in hit.interval.parts} if state else {}
            contributors = rank_contributors(
                hit.interval.parts, hit.interval.cost_usd_micros, usual
            )
            full = replace(hit, contributors=contributors)
            out.append(interval_outcome(rules, rule, full, now_ms))
        return out

    async def _ready_states(
        self, rule: AnomalyRule, groups: dict[EntityKey, list[ClosedInterval]], now_ms: int
    ) -> None:
        """Make sure every wanted entity has an up-to-date state in memory, within the caps.

        A state held in memory is current when no partition moved since this worker last
        judged the entity, or when its last interval is followed, without a gap, by intervals
        that just ended: this worker saw the entity throughout. Any other is checked against
        Redis's index (after a move and a gap, or for an interval closing late, another worker
        may have learned on). Without the first rule, every entity that spends in some minutes
        only (most users) cost an index read at each of its intervals.
        """
        sig = signature(rule)
        wanted = list(groups)
        interval_ms = rule.interval_s * 1000
        # An interval closing long after its end (its partition moved away meanwhile) may be
        # older than what another worker has stored since.
        watermark_ms = self._book.watermark_ms(now_ms) if self._book is not None else 0
        recent_after_ms = watermark_ms - 2 * interval_ms - rule.grace_s * 1000
        current = self._current
        unsure = [
            key
            for key, intervals in groups.items()
            if (held := self._states.get(key)) is None
            or held.signature != sig
            or (
                key not in current
                and (
                    not _follows(held.last_start_ms, intervals, interval_ms)
                    or intervals[0].start_ms < recent_after_ms
                )
            )
        ]
        self.stats.index_reads += len(unsure)
        marks = await self._store.marks(unsure)
        reload = [
            key
            for key in unsure
            if marks[key] is not None
            and (
                (held := self._states.get(key)) is None
                or held.last_start_ms < (marks[key] or 0)
                or held.signature != sig
            )
        ]
        loaded = await self._store.load(reload)
        for key, state in loaded.items():
            if state.signature == sig:
                self._keep(key, state)
            else:
                self._states.pop(key, None)
        fresh = [k for k in unsure if k not in self._states or self._states[k].signature != sig]
        if not fresh:
            for key in wanted:
                self._states.move_to_end(key)
            return
        tenants = {t for t, _, _ in fresh}
        sizes = await self._store.sizes(tenants)
        for tenant in tenants:
            if sizes[tenant] >= rule.max_models:
                stale_before = now_ms - rule.idle_expiry_s * 1000
                sizes[tenant] -= await self._store.prune(tenant, stale_before)
        for key in fresh:
            tenant, scope, _ = key
            known = marks[key] is not None
            if not known and scope is not Scope.tenant and sizes[tenant] >= rule.max_models:
                self.stats.over_cap += 1
                continue
            if not known:
                sizes[tenant] += 1
            self._keep(key, EntityState(sig, None))  # its model is built when it warms up
        for key in wanted:
            if key in self._states:
                self._states.move_to_end(key)

    def _paging(self, key: EntityKey) -> bool:
        state = self._states.get(key)
        return state is not None and state.episode_paged

    def _keep(self, key: EntityKey, state: EntityState) -> None:
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self._max_in_memory:
            dropped, _ = self._states.popitem(last=False)
            self._current.discard(dropped)

    async def _act(
        self, rules: RuleSet, rule: AnomalyRule, outcomes: list[Outcome], now_ms: int
    ) -> Findings:
        """Alerts past their cooldown; decisions stored (a re-trigger extends them)."""
        found = Findings()
        if not outcomes:
            return found
        for o in outcomes:
            a = o.alert
            cooldown_s = rule.cooldown_s
            if rule.outliers is not None and a.rule_id == rule.outliers.id:
                cooldown_s = rule.outliers.cooldown_s
            if await self._decisions.claim_alert(
                a.tenant_id, a.rule_id, a.scope, a.entity_id, cooldown_s, now_ms
            ):
                found.alerts.append(a)
        enforced = [o.decision for o in outcomes if o.decision and not o.decision.shadow]
        changes = await self._decisions.save(enforced, now_ms)
        found.decisions = [d for d, c in zip(enforced, changes, strict=True) if c is Change.new]
        return found


def _judge(rule: AnomalyRule, state: EntityState, iv: ClosedInterval) -> IntervalHit | None:
    """Score one closed interval, learn it unless it looked anomalous; the hit if it pages.

    An interval pages when it is anomalous and cost at least `min_spend_usd`, or when the run
    of anomalous intervals it ends has cost `min_spend_usd` above expected in all (a tenant
    moved to a dearer model at night: a few cents a minute, but sixteen times its usual).
    """
    ts_s = iv.start_ms / 1000
    x = iv.cost_usd
    detector = state.detector
    if detector is None:
        if len(state.cold) < 2 * cold_rows(rule):
            # No model is warm this early, so none could find this interval anomalous: it is
            # learned, as the model would learn it, once the model exists.
            state.cold.extend((ts_s, x))
            state.learned(x, iv.parts, iv.requests)
            state.intervals += 1
            return None
        detector = state.detector = new_model(rule)
        cold = state.cold
        for i in range(0, len(cold), 2):
            detector.learn_one(cold[i], cold[i + 1])
        state.cold = array("d")
    verdict = detector.score_one(ts_s, x)
    above = verdict.warm and x > verdict.high
    anomalous = above and x > rule.jump_factor * state.recent_usd
    state.anomalous_run = state.anomalous_run + 1 if anomalous else 0
    state.run_excess_usd = state.run_excess_usd + x - verdict.expected if anomalous else 0.0
    # From an anomalous interval until spend is back within the band, what is learned (after
    # relearn_after, or under the jump factor once the recent level has caught up) is a level
    # shift: it must not widen the band, or the next incident hides in it for a day.
    state.episode = anomalous or (above and state.episode)
    state.episode_paged = state.episode_paged and state.episode
    if not anomalous or state.anomalous_run > rule.relearn_after:
        detector.learn_one(ts_s, x, calibrate=not state.episode)
        state.learned(x, iv.parts, iv.requests)
        state.intervals += 1
    if anomalous and (x >= rule.min_spend_usd or state.run_excess_usd >= rule.min_spend_usd):
        state.episode_paged = True
        return IntervalHit(
            iv,
            verdict,
            [],
            run_intervals=state.anomalous_run,
            run_excess_usd=state.run_excess_usd,
            usual_call_usd=state.call_usd if state.intervals else None,
            usual_calls=state.calls if state.intervals else None,
        )
    return None


def new_model(rule: AnomalyRule) -> UnivariateDetector:
    return make_univariate(
        rule.detector, sensitivity=rule.sensitivity, interval_s=rule.interval_s, warmup=rule.warmup
    )


def cold_rows(rule: AnomalyRule) -> int:
    """Intervals an entity's model learns before it can judge any: the warm-up (the worker's
    detectors default to BAND_WARMUP when the rule sets none; the seasonal one waits longer)."""
    return rule.warmup if rule.warmup is not None else BAND_WARMUP


def _follows(last_start_ms: int, intervals: list[ClosedInterval], interval_ms: int) -> bool:
    """True when the intervals continue right after `last_start_ms`, one after another."""
    previous = last_start_ms
    for iv in intervals:
        if iv.start_ms != previous + interval_ms:
            return False
        previous = iv.start_ms
    return True


def _fold_into_tenants(hits: list[IntervalHit], paging: set[str]) -> list[IntervalHit]:
    """One alert per tenant and interval: when the tenant itself is anomalous, its users,
    features, models and keys of the same interval are named as its contributors instead; and
    while a tenant's anomaly that paged lasts (`paging`, still above its band), theirs are part
    of it, not news."""
    tenants = {
        (h.interval.entity[0], h.interval.start_ms)
        for h in hits
        if h.interval.entity[1] is Scope.tenant
    }
    return [
        h
        for h in hits
        if h.interval.entity[1] is Scope.tenant
        or (
            (h.interval.entity[0], h.interval.start_ms) not in tenants
            and h.interval.entity[0] not in paging
        )
    ]


def _book_changed(old: AnomalyRule, new: AnomalyRule) -> bool:
    return (old.scopes, old.interval_s, old.grace_s) != (new.scopes, new.interval_s, new.grace_s)


def _outliers_changed(old: OutlierRule, new: OutlierRule) -> bool:
    return (old.factor, old.min_cost_usd, old.warmup, old.max_entities, old.scopes) != (
        new.factor,
        new.min_cost_usd,
        new.warmup,
        new.max_entities,
        new.scopes,
    )
