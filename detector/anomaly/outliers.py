"""Per-event outliers: one call far dearer than its entity's usual calls.

Each entity keeps, in memory, a running centre and spread of the logarithm of its call costs
(exponentially weighted mean and mean absolute deviation: about 80 bytes per entity). A call is
an outlier when the entity is warm, the call costs at least `min_cost_usd`, and it is both
`factor` times the typical call (the geometric mean) and far outside the spread. Outliers are
not learned, so a stream of huge calls keeps firing (subject to the cooldown).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from detector.anomaly.intervals import EntityKey

ALPHA_FLOOR = 0.05  # after 20 calls the centre follows about the last 20 calls
SPREAD_Z = 4.0  # how many mean absolute deviations above the centre before a call is extreme
SPREAD_FLOOR = 0.1  # log units: a perfectly regular entity still allows ~10% jitter
MICRO = 1e-6


@dataclass(slots=True)
class CallScale:
    calls: int = 0
    centre: float = 0.0  # mean of log(cost_usd)
    spread: float = 0.0  # mean absolute deviation of log(cost_usd)

    def limit_usd(self, factor: float) -> float:
        """The dearest call still considered usual."""
        room = max(math.log(factor), SPREAD_Z * max(self.spread, SPREAD_FLOOR))
        return math.exp(self.centre + room)

    def learn(self, cost_usd: float) -> None:
        x = math.log(max(cost_usd, MICRO))
        self.calls += 1
        alpha = max(1.0 / self.calls, ALPHA_FLOOR)
        deviation = abs(x - self.centre) if self.calls > 1 else 0.0
        self.centre += alpha * (x - self.centre)
        self.spread += alpha * (deviation - self.spread)


@dataclass(frozen=True, slots=True)
class OutlierHit:
    entity: EntityKey
    cost_usd: float
    typical_usd: float
    limit_usd: float


class OutlierWatch:
    """Call scales of the most recently active entities, at most `max_entities` of them."""

    def __init__(self, factor: float, min_cost_usd: float, warmup: int, max_entities: int) -> None:
        self.factor = factor
        self.min_cost_usd = min_cost_usd
        self.warmup = warmup
        self.max_entities = max_entities
        self._scales: OrderedDict[EntityKey, CallScale] = OrderedDict()

    def observe(self, entity: EntityKey, cost_usd: float) -> OutlierHit | None:
        """Judge one call, then learn it unless it was an outlier.

        >>> w = OutlierWatch(factor=20, min_cost_usd=1.0, warmup=5, max_entities=100)
        >>> [w.observe(("t", "user", "u"), 0.01) for _ in range(5)] == [None] * 5
        True
        >>> hit = w.observe(("t", "user", "u"), 3.0)
        >>> (round(hit.typical_usd, 4), hit.cost_usd)
        (0.01, 3.0)
        """
        scale = self._scales.get(entity)
        if scale is None:
            scale = self._scales[entity] = CallScale()
            if len(self._scales) > self.max_entities:
                self._scales.popitem(last=False)
        else:
            self._scales.move_to_end(entity)
        if scale.calls >= self.warmup and cost_usd >= self.min_cost_usd:
            limit = scale.limit_usd(self.factor)
            if cost_usd > limit:
                return OutlierHit(entity, cost_usd, math.exp(scale.centre), limit)
        scale.learn(cost_usd)
        return None

    def __len__(self) -> int:
        return len(self._scales)
