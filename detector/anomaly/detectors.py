"""Online anomaly models built from river: a robust baseline, a seasonal forecaster, HalfSpaceTrees.

Every univariate model judges a point against a normal band `[low, high]` around its expected
value. The band is `expected +- k * scale`, where `scale` is a robust spread (rolling quantiles)
and `k` shrinks as the sensitivity grows. The score is 0.5 on the band's edge, below inside it and
tends to 1 far outside it, so `score >= 0.5` and "outside the band" say the same thing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from river import anomaly, stats, time_series


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float  # anomaly score in [0, 1], 1 = most anomalous (also the NAB output)
    expected: float  # the model's expected value for this point (baseline / forecast)
    low: float  # lower edge of the normal band at the configured sensitivity
    high: float  # upper edge of the normal band
    warm: bool  # False while the model has too little history to judge


class UnivariateDetector(Protocol):
    def score_one(self, ts: float, x: float) -> Verdict: ...

    def learn_one(self, ts: float, x: float) -> None: ...


class MultivariateDetector(Protocol):
    def score_one(self, ts: float, x: Mapping[str, float]) -> float: ...

    def learn_one(self, ts: float, x: Mapping[str, float]) -> None: ...


UNIVARIATE: tuple[str, ...] = ("robust", "seasonal")
MULTIVARIATE: tuple[str, ...] = ("hst",)
DEFAULT_UNIVARIATE = "robust"

_DAY_S = 86_400
# A normal distribution's IQR is 1.349 sigma; dividing by it makes the spread comparable to a sd.
_IQR_PER_SIGMA = 1.349
# 0.6745 is the normal's 75th percentile: median(|r|) / 0.6745 estimates sigma.
_MAD_PER_SIGMA = 0.6745


def band_width(sensitivity: float) -> float:
    """Half-width of the normal band in robust sigmas: 7 at sensitivity 0, 2 at sensitivity 1.

    >>> band_width(0.5)
    4.5
    """
    if not 0.0 <= sensitivity <= 1.0 or math.isnan(sensitivity):
        raise ValueError(f"sensitivity: must be within [0, 1], got {sensitivity!r}")
    return 2.0 + 5.0 * (1.0 - sensitivity)


def score_from_z(z: float, k: float) -> float:
    """Map a distance in robust sigmas to [0, 1]: 0.5 at the band edge k, towards 1 beyond.

    >>> score_from_z(4.5, 4.5)
    0.5
    >>> round(score_from_z(45.0, 4.5), 4)
    0.9999
    """
    if z <= 0.0:
        return 0.0
    r = (z / k) ** 2
    return r / (1.0 + r) if math.isfinite(r) else 1.0


def _points(seconds: float, interval_s: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(seconds / max(1, interval_s))))


class RobustDetector:
    """Rolling median as the baseline, rolling inter-quartile range as the spread."""

    def __init__(self, *, sensitivity: float, interval_s: int, warmup: int | None) -> None:
        self.k = band_width(sensitivity)
        window = _points(6 * 3600, interval_s, 64, 720)
        self.median = stats.RollingQuantile(0.5, window)
        self.q25 = stats.RollingQuantile(0.25, window)
        self.q75 = stats.RollingQuantile(0.75, window)
        # Floor for the spread of a flat series, so a constant baseline is not infinitely tight.
        self.abs_level = stats.EWMean(fading_factor=0.01)
        self.warmup = warmup if warmup is not None else min(window, 60)
        self.n = 0

    def _spread(self) -> float:
        iqr = (self.q75.get() or 0.0) - (self.q25.get() or 0.0)
        floor = 1e-3 * self.abs_level.get() + 1e-9
        return max(iqr / _IQR_PER_SIGMA, floor)

    def score_one(self, ts: float, x: float) -> Verdict:
        if self.n == 0:
            return Verdict(0.0, x, -math.inf, math.inf, False)
        expected = float(self.median.get() or 0.0)
        spread = self._spread()
        low, high = expected - self.k * spread, expected + self.k * spread
        if self.n < self.warmup:
            return Verdict(0.0, expected, low, high, False)
        return Verdict(score_from_z(abs(x - expected) / spread, self.k), expected, low, high, True)

    def learn_one(self, ts: float, x: float) -> None:
        self.median.update(x)
        self.q25.update(x)
        self.q75.update(x)
        self.abs_level.update(abs(x))
        self.n += 1


class SeasonalDetector:
    """Holt-Winters forecast with a daily season; the spread is the rolling MAD of its residuals."""

    def __init__(
        self, *, sensitivity: float, interval_s: int, warmup: int | None, period_s: int = _DAY_S
    ) -> None:
        self.k = band_width(sensitivity)
        self.season = _points(period_s, interval_s, 2, 2016)
        self.model = time_series.HoltWinters(
            alpha=0.3, beta=0.01, gamma=0.2, seasonality=self.season
        )
        window = _points(6 * 3600, interval_s, 64, 720)
        self.abs_resid = stats.RollingQuantile(0.5, window)
        self.abs_level = stats.EWMean(fading_factor=0.01)
        self.warmup = warmup if warmup is not None else self.season + 30
        self.n = 0
        self.last = 0.0
        self.first: list[float] = []

    def _forecast(self) -> float:
        if not self.model._initialized:
            return self.last
        return float(self.model.forecast(1)[0])

    def _spread(self) -> float:
        mad = float(self.abs_resid.get() or 0.0) / _MAD_PER_SIGMA
        return max(mad, 1e-3 * self.abs_level.get() + 1e-9)

    def score_one(self, ts: float, x: float) -> Verdict:
        if self.n == 0:
            return Verdict(0.0, x, -math.inf, math.inf, False)
        expected = self._forecast()
        spread = self._spread()
        low, high = expected - self.k * spread, expected + self.k * spread
        if self.n < self.warmup:
            return Verdict(0.0, expected, low, high, False)
        return Verdict(score_from_z(abs(x - expected) / spread, self.k), expected, low, high, True)

    def learn_one(self, ts: float, x: float) -> None:
        if self.n > 0:
            self.abs_resid.update(abs(x - self._forecast()))
        if self.model._initialized:
            self.model.learn_one(x)
        else:
            self._start(x)
        self.abs_level.update(abs(x))
        self.last = x
        self.n += 1

    def _start(self, x: float) -> None:
        # river would seed an additive season with y / level (the multiplicative form, and a
        # division by zero on a zero level); we seed level, trend and season ourselves instead.
        self.first.append(x)
        if len(self.first) < self.season:
            return
        level = statistics.fmean(self.first)
        self.model.level.append(level)
        self.model.trend.append(0.0)
        self.model.season.extend(y - level for y in self.first)
        self.model._initialized = True
        self.first = []


class HSTDetector:
    """HalfSpaceTrees on features squashed to [0, 1], its raw score judged against its own history.

    HalfSpaceTrees' raw score sits anywhere in [0, 1] for normal points, depending on the data, so
    the raw score is standardised by the rolling median and spread of the raw scores of the points
    it learned, and mapped like a univariate distance (0.5 on the band edge).
    """

    def __init__(self, *, sensitivity: float, interval_s: int, warmup: int | None) -> None:
        self.k = band_width(sensitivity)
        window = _points(4 * 3600, interval_s, 50, 250)
        self.model = anomaly.HalfSpaceTrees(n_trees=15, height=6, window_size=window, seed=42)
        self.means: dict[str, stats.EWMean] = {}
        self.vars: dict[str, stats.EWVar] = {}
        self.raw_median = stats.RollingQuantile(0.5, 256)
        self.raw_q75 = stats.RollingQuantile(0.75, 256)
        self.warmup = warmup if warmup is not None else 2 * window
        self.n = 0
        self._last: tuple[float, tuple[tuple[str, float], ...], float] | None = None

    def _scaled(self, x: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value in x.items():
            v = math.copysign(math.log1p(abs(value)), value)
            mean, var = self.means.get(name), self.vars.get(name)
            if mean is None or var is None:
                out[name] = 0.5
                continue
            z = (v - mean.get()) / math.sqrt(var.get() + 1e-12)
            out[name] = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z / 3.0))))
        return out

    def _raw(self, ts: float, x: Mapping[str, float]) -> float:
        key = tuple(sorted(x.items()))
        if self._last is not None and self._last[0] == ts and self._last[1] == key:
            return self._last[2]
        raw = float(self.model.score_one(self._scaled(x)))
        self._last = (ts, key, raw)
        return raw

    def score_one(self, ts: float, x: Mapping[str, float]) -> float:
        if self.n < self.warmup:
            return 0.0
        median = float(self.raw_median.get() or 0.0)
        spread = max((float(self.raw_q75.get() or 0.0) - median) / _MAD_PER_SIGMA, 0.01)
        return score_from_z(max(0.0, self._raw(ts, x) - median) / spread, self.k)

    def learn_one(self, ts: float, x: Mapping[str, float]) -> None:
        if self.n >= self.model.window_size:
            raw = self._raw(ts, x)
            self.raw_median.update(raw)
            self.raw_q75.update(raw)
        scaled = self._scaled(x)
        for name, value in x.items():
            v = math.copysign(math.log1p(abs(value)), value)
            self.means.setdefault(name, stats.EWMean(fading_factor=0.02)).update(v)
            self.vars.setdefault(name, stats.EWVar(fading_factor=0.02)).update(v)
        self.model.learn_one(scaled)
        self._last = None
        self.n += 1


def make_univariate(
    name: str = "default",
    *,
    sensitivity: float = 0.5,
    interval_s: int = 60,
    warmup: int | None = None,
) -> UnivariateDetector:
    """A fresh univariate model by name ("default" is DEFAULT_UNIVARIATE)."""
    chosen = DEFAULT_UNIVARIATE if name == "default" else name
    if interval_s <= 0:
        raise ValueError(f"interval_s: must be > 0, got {interval_s!r}")
    if chosen == "robust":
        return RobustDetector(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    if chosen == "seasonal":
        return SeasonalDetector(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    allowed = ", ".join(("default", *UNIVARIATE))
    raise ValueError(f"unknown univariate detector {name!r}; allowed: {allowed}")


def make_multivariate(
    name: str = "hst",
    *,
    sensitivity: float = 0.5,
    interval_s: int = 60,
    warmup: int | None = None,
) -> MultivariateDetector:
    """A fresh multivariate model by name."""
    if interval_s <= 0:
        raise ValueError(f"interval_s: must be > 0, got {interval_s!r}")
    if name == "hst":
        return HSTDetector(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    raise ValueError(f"unknown multivariate detector {name!r}; allowed: {', '.join(MULTIVARIATE)}")
