"""Record highs and lows as a score, on top of the combined model (the `record` detector).

A benchmark series is scored with one threshold for all of its rows, and many of NAB's labelled
anomalies are values the series has never reached before, yet inside a band that a noisy past
has made wide. Numenta's detectors add the same check ("spatial anomaly", a value more than 5% of
the seen range beyond it) to their HTM score. The band, and so what the worker alerts on, is the
combined model's; only the score changes, which is why the worker does not offer this detector:
in live spend, a new daily high is growth more often than an incident.
"""

from __future__ import annotations

import dataclasses
import math

from detector.anomaly.univariate import CombinedModel, Verdict, _check_finite

# Share of the seen range by which a row must beat the record: on NAB, 0.02 scored 60.1,
# 0.01 60.7, 0.05 58.8 and 0.1 56.8 (standard profile).
RECORD_MARGIN = 0.02
# Rows learned before a record counts: in a short history, plain noise sets records (on NAB,
# counting them from row 0, 300 or 600 scored within 0.1 of each other).
RECORD_AFTER_ROWS = 600


def beats_record(x: float, low: float, high: float, margin: float) -> bool:
    """Whether x is above high or below low by more than margin times the range high - low.

    >>> beats_record(10.3, 0.0, 10.0, 0.02), beats_record(10.1, 0.0, 10.0, 0.02)
    (True, False)
    >>> beats_record(-1.0, 0.0, 10.0, 0.02), beats_record(5.0, 5.0, 5.0, 0.02)
    (True, False)
    """
    reach = margin * (high - low)
    return reach > 0.0 and (x > high + reach or x < low - reach)


class RecordModel:
    """The combined model; a row beating the record high or low, after `after_rows`, scores 1."""

    def __init__(
        self,
        *,
        sensitivity: float,
        interval_s: int,
        warmup: int | None,
        margin: float = RECORD_MARGIN,
        after_rows: int = RECORD_AFTER_ROWS,
    ) -> None:
        self.model = CombinedModel(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
        self.margin = margin
        self.after_rows = after_rows
        self.n = 0
        self.low = math.inf
        self.high = -math.inf

    def score_one(self, ts: float, x: float) -> Verdict:
        verdict = self.model.score_one(ts, x)
        counts = verdict.warm and self.n >= self.after_rows
        if counts and beats_record(x, self.low, self.high, self.margin):
            return dataclasses.replace(verdict, score=1.0)
        return verdict

    def learn_one(self, ts: float, x: float, *, calibrate: bool = True) -> None:
        _check_finite(x)
        self.model.learn_one(ts, x, calibrate=calibrate)
        self.low = min(self.low, x)
        self.high = max(self.high, x)
        self.n += 1
