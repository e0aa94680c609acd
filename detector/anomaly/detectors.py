"""The anomaly models' interface, shared with the worker: protocols, names and factories.

Univariate models judge one number per interval (an entity's spend, requests, ...) against a
normal band; `Verdict.score` is 0.5 on the band's edge, below it inside and tends to 1 far
outside, so `warm and score >= 0.5` and "outside [low, high]" say the same thing. The
multivariate model scores a whole feature dict in [0, 1] with the same 0.5 convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from detector.anomaly.multivariate import HSTDetector
from detector.anomaly.novelty import NoveltyModel
from detector.anomaly.records import RecordModel
from detector.anomaly.univariate import (
    CombinedModel,
    LevelModel,
    RobustModel,
    SeasonalModel,
    Verdict,
    check_sensitivity,
)

__all__ = [
    "DEFAULT_SERIES",
    "DEFAULT_UNIVARIATE",
    "MULTIVARIATE",
    "SERIES_ONLY",
    "UNIVARIATE",
    "MultivariateDetector",
    "UnivariateDetector",
    "Verdict",
    "make_multivariate",
    "make_univariate",
]


class UnivariateDetector(Protocol):
    def score_one(self, ts: float, x: float) -> Verdict: ...  # judges x at ts; does NOT learn

    # The caller decides what to learn; calibrate=False: a level shift already judged
    # anomalous, which moves the expected value but does not widen the band.
    def learn_one(self, ts: float, x: float, *, calibrate: bool = True) -> None: ...


class MultivariateDetector(Protocol):
    def score_one(self, ts: float, x: Mapping[str, float]) -> float: ...  # [0, 1]

    def learn_one(self, ts: float, x: Mapping[str, float]) -> None: ...


UNIVARIATE: tuple[str, ...] = ("combined", "robust", "seasonal", "level")
MULTIVARIATE: tuple[str, ...] = ("hst",)
# Score a file in `detector anomaly score` but not the worker's intervals: their scores say "new
# record" or "new shape" for rows inside the band (records.py, novelty.py), and the worker alerts
# on the band.
SERIES_ONLY: tuple[str, ...] = ("novelty", "record")
# The best of the worker's detectors on NAB (benches/anomaly/nab.py, benches/anomaly/README.md).
DEFAULT_UNIVARIATE = "combined"
# What `detector anomaly score` runs by default: the best on NAB of all of them.
DEFAULT_SERIES = "novelty"


def _check(interval_s: int, warmup: int | None, sensitivity: float) -> None:
    check_sensitivity(sensitivity)
    if interval_s <= 0:
        raise ValueError(f"interval_s: must be > 0, got {interval_s!r}")
    if warmup is not None and warmup < 0:
        raise ValueError(f"warmup: must be >= 0, got {warmup!r}")


def make_univariate(
    name: str = "default",
    *,
    sensitivity: float = 0.5,
    interval_s: int = 60,
    warmup: int | None = None,
) -> UnivariateDetector:
    """A fresh univariate model by name ("default" is DEFAULT_UNIVARIATE)."""
    _check(interval_s, warmup, sensitivity)
    chosen = DEFAULT_UNIVARIATE if name == "default" else name
    if chosen == "combined":
        return CombinedModel(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    if chosen == "novelty":
        return NoveltyModel(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    if chosen == "record":
        return RecordModel(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    if chosen == "level":
        return LevelModel(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    if chosen == "robust":
        return RobustModel(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    if chosen == "seasonal":
        return SeasonalModel(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    allowed = ", ".join(("default", *UNIVARIATE, *SERIES_ONLY))
    raise ValueError(f"unknown univariate detector {name!r}; allowed: {allowed}")


def make_multivariate(
    name: str = "hst",
    *,
    sensitivity: float = 0.5,
    interval_s: int = 60,
    warmup: int | None = None,
) -> MultivariateDetector:
    """A fresh multivariate model by name."""
    _check(interval_s, warmup, sensitivity)
    if name == "hst":
        return HSTDetector(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
    raise ValueError(f"unknown multivariate detector {name!r}; allowed: {', '.join(MULTIVARIATE)}")
