"""Novel recent shapes, on top of the record model (the `novelty` detector).

The record model (records.py) sees values the series never reached; this one also sees a recent
stretch of the series whose shape was never seen, at any level inside the range: a spike pattern,
a flat spell in a busy series, a plateau, a dip. The idea follows ARTime (Hampton, adaptive
resonance over short windows, the best published NAB detector), in a much plainer form:

- the last `BLOCKS` blocks of `BLOCK_ROWS` rows, each block by its mean, form the row's window
  (the newest block ends at the row being scored, so a window exists at every row);
- every `BLOCK_ROWS` learned rows, the current window is stored in a memory of everything seen;
- the row's distance is the smallest, over the memory, of the largest per-block difference
  (in the series' own units);
- it is judged against the largest distance of the learned rows, a maximum that fades by
  `FADE_PER_ROW` per row: `r = SCALE * distance / that maximum`, novelty score `r^6 / (1 + r^6)`.
  So the score is relative to the series' own recent novelty and needs no scale of its own.

The row's score is the larger of the record model's and the novelty score. After a detection
(score >= 0.5), rows up to `QUIET_ROWS` later that do not beat its score score 0: NAB rewards only
the earliest detection in a window and charges every false one, and one event makes many
neighbouring windows novel. Not offered to the worker, for the record model's reasons.

BLOCK_ROWS, BLOCKS, SCALE, FADE_PER_ROW and QUIET_ROWS were chosen on NAB (figures in
benches/anomaly/README.md); the exponent 6 and the 300-row warm-up as well, among few tries.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import numpy as np

from detector.anomaly.records import RecordModel
from detector.anomaly.univariate import Verdict, _check_finite

BLOCK_ROWS = 6
BLOCKS = 6
SCALE = 1.4
FADE_PER_ROW = 0.9997  # the reference maximum halves in about 2,300 rows
QUIET_ROWS = 80
MEMORY_WINDOWS = 20_000  # windows remembered (each BLOCK_ROWS rows apart)
# Rows learned before the novelty score counts (its reference is built from row WARM_ROWS // 2).
WARM_ROWS = 300
_EXPONENT = 6
_DETECTION = 0.5


def novelty_score(distance: float, reference: float) -> float:
    """Score in [0, 1] of a window `distance` from all seen, against the fading maximum.

    >>> novelty_score(0.0, 1.0), novelty_score(1.0, 0.0)
    (0.0, 0.0)
    >>> round(novelty_score(1.0, 1.0), 3), novelty_score(10.0, 1.0) > 0.99
    (0.883, True)
    """
    if reference <= 0.0:
        return 0.0
    r = min(1e6, SCALE * distance / reference) ** _EXPONENT
    return r / (1.0 + r)


class WindowMemory:
    """Windows of block means seen so far, the newest `capacity` of them; the distance of a new
    one to the nearest.

    The cap bounds memory and the time per row (a scan of the stored windows): at the default,
    20,000 windows of 6 means, 960 KB and the last 120,000 rows, far beyond NAB's longest series
    (22,695 rows), whose scores are therefore the same as with no cap. Past it, the oldest
    window is forgotten first.
    """

    def __init__(self, blocks: int, capacity: int = MEMORY_WINDOWS) -> None:
        self.rows = np.empty((min(64, capacity), blocks))
        self.capacity = capacity
        self.n = 0  # windows held
        self.added = 0  # windows ever added

    def add(self, window: np.ndarray) -> None:
        if self.n < self.capacity:
            if self.n == len(self.rows):
                grown = min(2 * len(self.rows), self.capacity)
                self.rows = np.concatenate(
                    [self.rows, np.empty((grown - self.n, self.rows.shape[1]))]
                )
            self.rows[self.n] = window
            self.n += 1
        else:
            self.rows[self.added % self.capacity] = window  # the oldest slot
        self.added += 1

    def nearest(self, window: np.ndarray) -> float:
        """Smallest largest-block difference to a stored window (inf when empty)."""
        if self.n == 0:
            return math.inf
        return float(np.abs(self.rows[: self.n] - window).max(axis=1).min())


class NoveltyModel:
    """The record model, plus the novelty of the recent window, with a quiet spell after hits."""

    def __init__(
        self,
        *,
        sensitivity: float,
        interval_s: int,
        warmup: int | None,
        block_rows: int = BLOCK_ROWS,
        blocks: int = BLOCKS,
        quiet_rows: int = QUIET_ROWS,
    ) -> None:
        self.model = RecordModel(sensitivity=sensitivity, interval_s=interval_s, warmup=warmup)
        self.block_rows = block_rows
        self.blocks = blocks
        self.quiet_rows = quiet_rows
        self.recent: deque[float] = deque(maxlen=block_rows * blocks - 1)
        self.memory = WindowMemory(blocks)
        self.n = 0
        self.reference = 0.0  # fading maximum of the learned rows' distances
        self.last_hit = -(10**9)  # row number of the last detection
        self.hit_score = 0.0
        self._scored: tuple[float, float, float, float] | None = None  # ts, x, distance, raw

    def _window(self, x: float) -> np.ndarray | None:
        if len(self.recent) < (self.recent.maxlen or 0):
            return None
        values = np.fromiter((*self.recent, x), float, count=len(self.recent) + 1)
        means: np.ndarray = values.reshape(self.blocks, self.block_rows).mean(axis=1)
        return means

    def _distance(self, window: np.ndarray | None) -> float:
        if window is None or self.memory.n == 0:
            return 0.0
        return self.memory.nearest(window)

    def _raw(self, ts: float, x: float) -> tuple[Verdict, float, float]:
        """The record verdict, the row's distance and its score before the quiet spell."""
        verdict = self.model.score_one(ts, x)
        distance = self._distance(self._window(x))
        raw = verdict.score
        if self.n >= WARM_ROWS:
            raw = max(raw, novelty_score(distance, self.reference))
        return verdict, distance, raw

    def _quiet(self, raw: float) -> bool:
        return self.n - self.last_hit <= self.quiet_rows and raw <= self.hit_score

    def score_one(self, ts: float, x: float) -> Verdict:
        verdict, distance, raw = self._raw(ts, x)
        self._scored = (ts, x, distance, raw)
        return dataclasses.replace(verdict, score=0.0 if self._quiet(raw) else raw)

    def learn_one(self, ts: float, x: float, *, calibrate: bool = True) -> None:
        _check_finite(x)
        scored = self._scored
        if scored is not None and scored[0] == ts and scored[1] == x:
            distance, raw = scored[2], scored[3]
        else:
            _, distance, raw = self._raw(ts, x)
        self._scored = None
        if not self._quiet(raw) and raw >= _DETECTION:
            self.last_hit, self.hit_score = self.n, raw
        if self.n >= WARM_ROWS // 2:
            self.reference = max(self.reference * FADE_PER_ROW, distance)
        window = self._window(x)
        if window is not None and self.n % self.block_rows == 0:
            self.memory.add(window)
        self.recent.append(x)
        self.model.learn_one(ts, x, calibrate=calibrate)
        self.n += 1
