"""Univariate models: an expected value, a robust spread, and a band that calibrates itself.

Each model predicts the next value (rolling median, or a Holt-Winters forecast) and measures the
surprise `z = |x - expected| / spread`, where `spread` is a robust scale of recent residuals
(their rolling median absolute value, floored by their exponential mean so that a series with
many identical values does not get a zero scale). Raw `z` means different things on a smooth and
on a spiky series, so the band's half-width, in spreads, is the larger of a fixed floor and the
99.9th percentile of the model's own recent `z`, both scaled by the sensitivity: a point is
anomalous when it is more surprising than nearly everything the model saw recently. After a big
surprise the band also stays wide for a while (a peak that halves every 12 hours, capped at 4x
the usual percentile), so one incident's aftershocks do not each raise a new alert.
"""

from __future__ import annotations

import heapq
import math
import statistics
from array import array
from dataclasses import dataclass

from river import stats, time_series

# 0.6745 is the standard normal's 75th percentile: median(|r|) / 0.6745 estimates sigma.
_MAD_PER_SIGMA = 0.6745
_DAY_S = 86_400
_SETTLE_ROWS = 20
_PEAK_HALF_LIFE_S = 12 * 3600
_PEAK_CAP = 4.0
_MAX_Z = 1e30  # surprises are kept as float32, whose largest value is about 3.4e38


def _check_finite(x: float) -> None:
    if not math.isfinite(x):
        raise ValueError(f"x: must be a finite number, got {x!r}")


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float  # anomaly score in [0, 1], 1 = most anomalous (also the NAB output)
    expected: float  # the model's expected value for this point (baseline / forecast)
    low: float  # lower edge of the normal band at the configured sensitivity
    high: float  # upper edge of the normal band
    warm: bool  # False while the model has too little history to judge


def check_sensitivity(sensitivity: float) -> float:
    """The sensitivity itself, or ValueError when it is not within [0, 1]."""
    if not 0.0 <= sensitivity <= 1.0:  # also false for NaN
        raise ValueError(f"sensitivity: must be within [0, 1], got {sensitivity!r}")
    return sensitivity


def band_floor(sensitivity: float) -> float:
    """Smallest half-width of the band, in spreads: 4.5 at sensitivity 0, 1.5 at 1.

    >>> band_floor(0.5)
    3.0
    """
    return 1.5 + 3.0 * (1.0 - check_sensitivity(sensitivity))


def band_factor(sensitivity: float) -> float:
    """Multiplier on the recent 99.9th-percentile surprise: 2 at sensitivity 0, 0.5 at 1.

    >>> band_factor(0.5), band_factor(1.0)
    (1.0, 0.5)
    """
    return float(2.0 ** (1.0 - 2.0 * check_sensitivity(sensitivity)))


def score_from_z(z: float, k: float) -> float:
    """Map a distance in spreads to [0, 1]: 0.5 on the band edge k, towards 1 far beyond.

    >>> score_from_z(4.0, 4.0)
    0.5
    >>> round(score_from_z(12.0, 4.0), 4)
    0.9878
    """
    if z <= 0.0:
        return 0.0
    r = (z / k) ** 4
    return r / (1.0 + r) if math.isfinite(r) else 1.0


def points(seconds: float, interval_s: int, lo: int, hi: int) -> int:
    """How many rows of interval_s cover `seconds`, clipped to [lo, hi].

    >>> points(86_400, 300, 64, 720)
    288
    """
    return max(lo, min(hi, round(seconds / max(1, interval_s))))


class RecentTop:
    """The `rank`-th largest of the last `size` values: over 2,000 rows, rank 3 is about their
    99.9th percentile. Kept as a float32 ring (4 bytes a value) with the top ranks cached, so an
    update costs O(1) except when one of the cached top values leaves the ring.

    >>> top = RecentTop(size=4, rank=2)
    >>> for v in [1.0, 9.0, 2.0, 3.0]:
    ...     top.update(v)
    >>> top.get()
    3.0
    >>> top.update(0.5)  # 1.0 leaves
    >>> top.update(0.5)  # 9.0 leaves
    >>> top.get()
    2.0
    """

    __slots__ = ("pos", "rank", "ring", "top")

    def __init__(self, size: int = 2000, rank: int = 3) -> None:
        self.ring = array("f", bytes(4 * size))  # all zeros: a surprise is never negative
        self.rank = rank
        self.pos = 0
        self.top = [0.0] * rank  # descending

    def update(self, value: float) -> None:
        leaving = self.ring[self.pos]
        self.ring[self.pos] = value
        value = self.ring[self.pos]  # as stored, in float32
        self.pos = (self.pos + 1) % len(self.ring)
        if leaving >= self.top[-1] and leaving > 0.0:
            self.top = heapq.nlargest(self.rank, self.ring)
        elif value > self.top[-1]:
            self.top = sorted([*self.top[:-1], value], reverse=True)

    def get(self) -> float:
        return self.top[-1]


BAND_WARMUP = 120  # rows learned before a model judges, when the caller sets no warm-up


class BandModel:
    """Shared part: residual spread, self-calibrating band, warm-up. Subclasses predict."""

    def __init__(self, *, sensitivity: float, interval_s: int, warmup: int | None) -> None:
        self.floor_k = band_floor(sensitivity)
        self.factor = band_factor(sensitivity)
        self.abs_resid = stats.RollingQuantile(0.5, points(_DAY_S, interval_s, 64, 288))
        self.mean_abs_resid = stats.EWMean(fading_factor=0.01)
        self.abs_level = stats.EWMean(fading_factor=0.01)
        # About a week of 5-minute rows; long enough to have seen the usual bursts.
        self.recent_z = RecentTop(size=2000, rank=3)
        self.peak_z = 0.0
        self.peak_decay = 0.5 ** (interval_s / _PEAK_HALF_LIFE_S)  # per learned row
        self.warmup = warmup if warmup is not None else BAND_WARMUP
        self.n = 0

    def expected(self) -> float | None:
        raise NotImplementedError

    def update_expected(self, x: float) -> None:
        raise NotImplementedError

    def spread(self) -> float:
        mad = float(self.abs_resid.get() or 0.0) / _MAD_PER_SIGMA
        floor = 1e-3 * self.abs_level.get() + 1e-9
        return max(mad, self.mean_abs_resid.get(), floor)

    def half_width(self) -> float:
        """Band half-width in spreads."""
        return max(self.floor_k, self.factor * max(self.recent_z.get(), self.peak_z))

    def score_one(self, ts: float, x: float) -> Verdict:
        _check_finite(x)
        expected = self.expected()
        if expected is None:
            return Verdict(0.0, x, -math.inf, math.inf, False)
        spread, k = self.spread(), self.half_width()
        low, high = expected - k * spread, expected + k * spread
        if self.n < self.warmup:
            return Verdict(0.0, expected, low, high, False)
        return Verdict(score_from_z(abs(x - expected) / spread, k), expected, low, high, True)

    def learn_one(self, ts: float, x: float, *, calibrate: bool = True) -> None:
        """Learn x; with calibrate=False x moves the expected value but not the spread or the
        band (a level shift the caller already judged anomalous is not a sign of noise)."""
        _check_finite(x)
        expected = self.expected()
        if expected is not None and calibrate:
            residual = abs(x - expected)
            if self.n >= _SETTLE_ROWS:
                # Measured before the residual joins the spread, as score_one does; the first
                # rows are left out because their spread is still a guess.
                z = min(residual / self.spread(), _MAX_Z)
                self.recent_z.update(z)
                cap = _PEAK_CAP * self.recent_z.get()
                self.peak_z = max(self.peak_z * self.peak_decay, min(z, cap))
            self.abs_resid.update(residual)
            self.mean_abs_resid.update(residual)
        self.abs_level.update(abs(x))
        self.update_expected(x)
        self.n += 1


class RobustModel(BandModel):
    """Rolling median of the last day of rows (at least 64, at most 288) as the expected value."""

    def __init__(self, *, sensitivity: float, interval_s: int, warmup: int | None) -> None:
        super().__init__(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
        self.median = stats.RollingQuantile(0.5, points(_DAY_S, interval_s, 64, 288))

    def expected(self) -> float | None:
        value = self.median.get() if self.n else None
        return None if value is None else float(value)

    def update_expected(self, x: float) -> None:
        self.median.update(x)


class SeasonalModel(BandModel):
    """Additive Holt-Winters with a daily season (weekly for hourly data) as the expected value."""

    def __init__(self, *, sensitivity: float, interval_s: int, warmup: int | None) -> None:
        super().__init__(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
        period_s = 7 * _DAY_S if interval_s >= 3600 else _DAY_S
        self.season = points(period_s, interval_s, 2, 2016)
        # river's time_series module carries no annotations, hence the ignores below.
        self.model = time_series.HoltWinters(  # type: ignore[no-untyped-call]
            alpha=0.3, beta=0.01, gamma=0.3, seasonality=self.season
        )
        self.first: list[float] = []
        self.last: float | None = None
        if warmup is None:
            self.warmup = max(self.warmup, self.season + 30)

    def expected(self) -> float | None:
        if self.model._initialized:
            return float(self.model.forecast(1)[0])  # type: ignore[no-untyped-call]
        return self.last

    def update_expected(self, x: float) -> None:
        self.last = x
        if self.model._initialized:
            # As in LevelModel: a lone spike must not drag the level and the season with it.
            centre, reach = float(self.expected() or 0.0), self.half_width() * self.spread()
            clipped = min(centre + reach, max(centre - reach, x))
            self.model.learn_one(clipped)  # type: ignore[no-untyped-call]
            return
        # river would seed an additive season with y / level (the multiplicative form, and a
        # division by zero on a zero level); we seed level, trend and season ourselves instead.
        self.first.append(x)
        if len(self.first) < self.season:
            return
        level = statistics.fmean(self.first)
        trend, season = self.model.trend, self.model.season
        assert trend is not None and season is not None  # beta and gamma are set above
        self.model.level.append(level)
        trend.append(0.0)
        season.extend(y - level for y in self.first)
        self.model._initialized = True
        self.first = []


class LevelModel(BandModel):
    """Exponentially weighted mean of recent rows (`river.stats.EWMean`, weight 0.3 on the newest,
    each row clipped to the band) as the expected value: quick to follow a new level."""

    def __init__(self, *, sensitivity: float, interval_s: int, warmup: int | None) -> None:
        super().__init__(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
        self.level = stats.EWMean(fading_factor=0.3)

    def expected(self) -> float | None:
        return float(self.level.get()) if self.n else None

    def update_expected(self, x: float) -> None:
        # A lone spike must not drag the level (or the row after it would look anomalous):
        # the level learns x clipped to the band, so it moves to a new level over a few rows.
        if self.n:
            centre, reach = float(self.level.get()), self.half_width() * self.spread()
            x = min(centre + reach, max(centre - reach, x))
        self.level.update(x)


class CombinedModel:
    """Robust, seasonal and level models together: anomalous when any finds x outside its band.

    The normal band is the overlap of the bands (when they do not overlap, every value is
    anomalous and the band shrinks to the middle of the gap); the score is the largest. The
    seasonal model joins once it has seen its first season; until then the others judge alone.
    """

    def __init__(self, *, sensitivity: float, interval_s: int, warmup: int | None) -> None:
        self.parts: tuple[BandModel, ...] = tuple(
            model(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
            for model in (RobustModel, SeasonalModel, LevelModel)
        )

    def score_one(self, ts: float, x: float) -> Verdict:
        verdicts = [part.score_one(ts, x) for part in self.parts]
        first = verdicts[0]
        judging = [v for v in verdicts if v.warm] if first.warm else [first]
        low = max(v.low for v in judging)
        high = min(v.high for v in judging)
        if low > high:
            low = high = (low + high) / 2.0
        expected = min(high, max(low, statistics.median(v.expected for v in judging)))
        return Verdict(max(v.score for v in judging), expected, low, high, first.warm)

    def learn_one(self, ts: float, x: float, *, calibrate: bool = True) -> None:
        for part in self.parts:
            part.learn_one(ts, x, calibrate=calibrate)
