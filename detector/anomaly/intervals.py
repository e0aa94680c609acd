"""Pure interval book-keeping: spend per entity per interval, with the sub-dimensions inside it.

Events add their cost to the open interval of every entity they belong to; an interval is
closed once event time (less a grace for stragglers) has passed its end. Event time is followed
per source (a Kafka partition, whose events arrive in order): the book's event time is the
slowest live source's newest event, so a worker catching up on a backlog, where one partition
may be read minutes of event time ahead of another, does not close intervals the slower one
still feeds. A source with nothing new for SOURCE_IDLE_MS of the clock stops holding the others
back. Money is in integer micro-dollars, as in the windows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from detector.schemas import Scope, UsageEvent

# For a spike of one entity, the dimensions inside it worth naming. The tenant, whose spikes
# most need explaining, keeps all four; the others keep the one that says most, since this
# book-keeping runs for every event.
SUB_SCOPES: dict[Scope, tuple[Scope, ...]] = {
    Scope.tenant: (Scope.user, Scope.feature, Scope.model, Scope.api_key),
    Scope.user: (Scope.model,),
    Scope.feature: (Scope.user,),
    Scope.model: (Scope.user,),
    Scope.api_key: (Scope.user,),
}

# Where each scope's id sits in the tuple IntervalBook.add builds from an event.
_ID_AT = {Scope.tenant: 0, Scope.user: 1, Scope.feature: 2, Scope.model: 3, Scope.api_key: 4}

EntityKey = tuple[str, Scope, str]  # tenant, scope, entity id
# A source (partition) that delivered nothing new for this long (on the caller's clock) no
# longer holds the book's event time back: it is idle, not behind.
SOURCE_IDLE_MS = 10_000
SubKey = tuple[Scope, str]


@dataclass(slots=True)
class OpenInterval:
    """Spend of one entity within one interval so far, and what it was spent on."""

    cost_usd_micros: int = 0
    requests: int = 0
    parts: dict[SubKey, int] = field(default_factory=dict)


class ClosedInterval(NamedTuple):
    """Spend of one entity within one interval that has ended (a named tuple: one is made per
    entity and interval, and a tuple is built several times faster than a frozen dataclass)."""

    entity: EntityKey
    start_ms: int
    cost_usd_micros: int
    requests: int
    parts: dict[SubKey, int]

    @property
    def cost_usd(self) -> float:
        return self.cost_usd_micros / 1_000_000


def interval_start_ms(ts_ms: int, interval_s: int) -> int:
    """Start of the interval that holds ts_ms.

    >>> interval_start_ms(125_000, 60)
    120000
    """
    return ts_ms - ts_ms % (interval_s * 1000)


class IntervalBook:
    """Open intervals of every modelled entity, closed on event time."""

    def __init__(self, scopes: Sequence[Scope], interval_s: int, grace_s: int) -> None:
        self.scopes = tuple(scopes)
        self.interval_ms = interval_s * 1000
        self.grace_ms = grace_s * 1000
        self.closed_before_ms = 0  # intervals starting before this are closed
        # source -> [newest event time seen from it, clock when it last delivered or joined]
        self.sources: dict[int, list[int]] = {}
        self.late_events = 0  # events for an interval already closed (counted in windows only)
        self._open: dict[int, dict[EntityKey, OpenInterval]] = {}
        # Per scope: where its id sits in an event's id tuple, and where its sub-dimensions do.
        self._plan = tuple(
            (scope, _ID_AT[scope], tuple((sub, _ID_AT[sub]) for sub in SUB_SCOPES[scope]))
            for scope in self.scopes
        )

    def add(self, event: UsageEvent, cost_usd_micros: int, clock_ms: int, source: int = 0) -> bool:
        """Count one event from `source`; False when its interval is already closed (too late
        for the model)."""
        ts_ms = min(event.ts_ms, clock_ms)  # an event from the future must not close intervals
        start = ts_ms - ts_ms % self.interval_ms
        mark = self.sources.get(source)
        if mark is None:
            mark = self.sources[source] = [ts_ms, clock_ms]
        elif ts_ms > mark[0]:
            mark[0] = ts_ms
        mark[1] = clock_ms
        if start < self.closed_before_ms:
            self.late_events += 1
            return False
        book = self._open.get(start)
        if book is None:
            book = self._open[start] = {}
        tenant = event.tenant_id
        ids = (tenant, event.user_id, event.feature, event.model, event.api_key_id)
        for scope, at, subs in self._plan:
            entity = ids[at]
            if entity is None:
                continue
            key = (tenant, scope, entity)
            slot = book.get(key)
            if slot is None:
                slot = book[key] = OpenInterval()
            slot.cost_usd_micros += cost_usd_micros
            slot.requests += 1
            parts = slot.parts
            for sub, sub_at in subs:
                sub_id = ids[sub_at]
                if sub_id is not None:
                    part = (sub, sub_id)
                    parts[part] = parts.get(part, 0) + cost_usd_micros
        return True

    def join(self, sources: Iterable[int], clock_ms: int) -> None:
        """Sources assigned before they deliver anything: each holds event time back until it
        delivers or stays idle (a partition read later than the others, at start or after a
        rebalance, is not left behind by them)."""
        for source in sources:
            self.sources.setdefault(source, [0, clock_ms])

    def leave(self, sources: Iterable[int]) -> None:
        """Sources taken away (their partitions moved to another worker)."""
        for source in sources:
            self.sources.pop(source, None)

    def watermark_ms(self, clock_ms: int) -> int:
        """The book's event time: the newest event of the slowest source still live at
        clock_ms. When every source is idle, the stream is quiet, not behind: event time then
        follows the clock, SOURCE_IDLE_MS behind it, so that the last intervals before a lull
        are scored without waiting for the next event. 0 before any event."""
        marks = self.sources.values()
        if not marks:
            return 0
        live = [ts for ts, seen in marks if clock_ms - seen <= SOURCE_IDLE_MS]
        if live:
            return min(live)
        return max(max(ts for ts, _ in marks), clock_ms - SOURCE_IDLE_MS)

    def close_due(self, clock_ms: int) -> list[ClosedInterval]:
        """Every interval whose end event time has passed (less the grace), oldest first."""
        due_before = self.watermark_ms(clock_ms) - self.grace_ms
        due_before -= due_before % self.interval_ms  # first interval still open
        return self._close(lambda start: start < due_before, due_before)

    def close_all(self) -> list[ClosedInterval]:
        """Close everything still open (end of a replay)."""
        newest = max(self._open, default=self.closed_before_ms - self.interval_ms)
        return self._close(lambda start: True, newest + self.interval_ms)

    def _close(self, due: Callable[[int], bool], before_ms: int) -> list[ClosedInterval]:
        out: list[ClosedInterval] = []
        for start in sorted(s for s in self._open if due(s)):
            for key, slot in self._open.pop(start).items():
                out.append(
                    ClosedInterval(key, start, slot.cost_usd_micros, slot.requests, slot.parts)
                )
        self.closed_before_ms = max(self.closed_before_ms, before_ms)
        return out

    def open_entities(self) -> int:
        return sum(len(book) for book in self._open.values())


@dataclass(frozen=True, slots=True)
class Contributor:
    scope: Scope
    entity_id: str
    cost_usd: float
    expected_usd: float | None  # its usual spend per interval, when it has a model
    share: float  # of the interval's spend

    @property
    def impact_usd(self) -> float:
        return self.cost_usd - (self.expected_usd or 0.0)

    def as_dict(self) -> dict[str, str | float]:
        out: dict[str, str | float] = {
            "scope": self.scope.value,
            "id": self.entity_id,
            "cost_usd": round(self.cost_usd, 6),
        }
        if self.expected_usd is not None:
            out["expected_usd"] = round(self.expected_usd, 6)
        out["impact_usd"] = round(self.impact_usd, 6)
        out["share"] = round(self.share, 4)
        return out


def rank_contributors(
    parts: dict[SubKey, int],
    total_usd_micros: int,
    expected_usd: dict[SubKey, float],
    top: int = 5,
) -> list[Contributor]:
    """Sub-dimensions ranked by dollars above their own usual interval (the impact).

    >>> parts = {(Scope.user, "u1"): 9_000_000, (Scope.user, "u2"): 1_000_000}
    >>> [(c.entity_id, c.impact_usd) for c in rank_contributors(parts, 10_000_000,
    ...                                                          {(Scope.user, "u1"): 0.5})]
    [('u1', 8.5), ('u2', 1.0)]
    """
    found = [
        Contributor(
            scope,
            entity,
            micros / 1_000_000,
            expected_usd.get((scope, entity)),
            micros / total_usd_micros if total_usd_micros else 0.0,
        )
        for (scope, entity), micros in parts.items()
    ]
    found.sort(key=lambda c: (-c.impact_usd, c.scope.value, c.entity_id))
    return found[:top]


def group_by_entity(closed: Iterable[ClosedInterval]) -> dict[EntityKey, list[ClosedInterval]]:
    """Closed intervals per entity, oldest first (the order a model must see them in)."""
    out: dict[EntityKey, list[ClosedInterval]] = defaultdict(list)
    for item in closed:
        out[item.entity].append(item)
    for items in out.values():
        if len(items) > 1:
            items.sort(key=_start)
    return dict(out)


def _start(interval: ClosedInterval) -> int:
    return interval.start_ms
