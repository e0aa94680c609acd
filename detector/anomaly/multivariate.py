"""Multivariate model: river's HalfSpaceTrees over an entity's per-interval features."""

from __future__ import annotations

import math
from collections.abc import Mapping

from river import anomaly, stats

from detector.anomaly.univariate import RecentTop, band_factor, band_floor, points, score_from_z

_MAD_PER_SIGMA = 0.6745


class HSTDetector:
    """HalfSpaceTrees on features squashed to [0, 1], its raw score judged against its own history.

    HalfSpaceTrees' raw score sits anywhere in [0, 1] for normal points, depending on the data, so
    the raw score is standardised by the rolling median and spread of the raw scores of the points
    it learned, and that distance is judged like a univariate one: the band's edge is the larger of
    a floor and the 99.9th percentile of recent distances, scaled by the sensitivity.
    """

    def __init__(self, *, sensitivity: float, interval_s: int, warmup: int | None) -> None:
        self.floor_k = band_floor(sensitivity)
        self.factor = band_factor(sensitivity)
        self.recent_z = RecentTop(size=2000, rank=3)
        window = points(4 * 3600, interval_s, 50, 250)
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
            if not math.isfinite(value):
                raise ValueError(f"x[{name!r}]: must be a finite number, got {value!r}")
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
        # river's HalfSpaceTrees carries no annotations.
        raw = float(self.model.score_one(self._scaled(x)))  # type: ignore[no-untyped-call]
        self._last = (ts, key, raw)
        return raw

    def _z(self, raw: float) -> float:
        median = float(self.raw_median.get() or 0.0)
        spread = max((float(self.raw_q75.get() or 0.0) - median) / _MAD_PER_SIGMA, 0.005)
        return max(0.0, raw - median) / spread

    def score_one(self, ts: float, x: Mapping[str, float]) -> float:
        if self.n < self.warmup:
            return 0.0
        k = max(self.floor_k, self.factor * self.recent_z.get())
        return score_from_z(self._z(self._raw(ts, x)), k)

    def learn_one(self, ts: float, x: Mapping[str, float]) -> None:
        # The trees' first window is empty (every score is the same), so judging starts after it.
        if self.n >= self.model.window_size:
            raw = self._raw(ts, x)
            if self.n >= self.model.window_size + 50:
                self.recent_z.update(self._z(raw))
            self.raw_median.update(raw)
            self.raw_q75.update(raw)
        scaled = self._scaled(x)
        for name, value in x.items():
            v = math.copysign(math.log1p(abs(value)), value)
            self.means.setdefault(name, stats.EWMean(fading_factor=0.02)).update(v)
            self.vars.setdefault(name, stats.EWVar(fading_factor=0.02)).update(v)
        self.model.learn_one(scaled)  # type: ignore[no-untyped-call]
        self._last = None
        self.n += 1
