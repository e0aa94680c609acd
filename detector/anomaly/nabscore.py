"""NAB scoring rules (Lavin & Ahmad 2015), written from their description: pure, no I/O.

Each labelled anomaly window earns the best weight of the detections inside it (early ones earn
most, via a scaled sigmoid of the position in the window) or costs `fn_weight` when none falls in
it; every detection outside a window costs `fp_weight` times a sigmoid that forgives detections
just after a window. The first 15% of each file (at most 750 rows) is a probation period that
counts for nothing. One threshold is chosen for the whole corpus, the one that maximises the
summed score, and the sum is normalised so that the null detector (never detects) scores 0 and the
perfect detector (detects each window on its first row) scores 100.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PROBATION_FRACTION = 0.15
# Same probation rule as NAB: 15% of the file, but never more than 15% of 5,000 rows.
PROBATION_CAP_ROWS = 0.15 * 5000


@dataclass(frozen=True, slots=True)
class Profile:
    tp_weight: float
    fp_weight: float
    fn_weight: float


PROFILES: dict[str, Profile] = {
    "standard": Profile(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": Profile(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN_rate": Profile(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}


def scaled_sigmoid(position: float) -> float:
    """NAB's weight for a detection at a relative position (-1 = window start, 0 = window end).

    >>> round(scaled_sigmoid(-1.0), 6)
    0.986614
    >>> scaled_sigmoid(0.0)
    0.0
    >>> scaled_sigmoid(3.5)
    -1.0
    """
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


@dataclass(frozen=True, slots=True)
class Row:
    """One scorable row: its score, its unit weight, and the window it belongs to (or None)."""

    anomaly_score: float
    weight: float  # tp weight (inside a window) or the fp sigmoid factor (outside), unscaled
    window: int | None  # global window id; None = outside every window


def sweep_rows(
    n_rows: int, windows: Sequence[tuple[int, int]], scores: Sequence[float], first_window_id: int
) -> list[Row]:
    """Rows of one file after probation, windows given as inclusive (start, end) row indices."""
    if len(scores) != n_rows:
        raise ValueError(f"expected {n_rows} scores, got {len(scores)}")
    probation = min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_CAP_ROWS)
    inside: list[int | None] = [None] * n_rows
    for number, (first, last) in enumerate(sorted(windows)):
        for i in range(first, last + 1):
            inside[i] = number
    ordered = sorted(windows)
    rows: list[Row] = []
    prev: tuple[int, int] | None = None  # (right index, width) of the last window passed
    for i in range(n_rows):
        wid = inside[i]
        if wid is not None:
            start, end = ordered[wid]
            width = end - start + 1
            weight = scaled_sigmoid(-(end - i + 1) / width) / scaled_sigmoid(-1.0)
            if i == end:
                prev = (end, width)
        elif prev is None:
            weight = -1.0
        else:
            # A one-row window would divide by zero here; NAB's windows are never that small.
            weight = scaled_sigmoid(abs(prev[0] - i) / (prev[1] - 1))
        if i >= probation:
            gid = None if wid is None else first_window_id + wid
            rows.append(Row(scores[i], weight, gid))
    return rows


@dataclass(frozen=True, slots=True)
class ThresholdScore:
    threshold: float
    score: float
    tp: int
    fp: int


def score_by_threshold(
    rows: Sequence[Row], n_windows: int, profile: Profile
) -> list[ThresholdScore]:
    """Raw score at every distinct threshold, highest threshold first (plus 'never detect')."""
    best: dict[int, float] = {}
    fp_sum = 0.0
    tp = fp = 0
    out = [ThresholdScore(math.inf, -profile.fn_weight * n_windows, 0, 0)]
    ordered = sorted(rows, key=lambda r: r.anomaly_score, reverse=True)
    window_sum = -profile.fn_weight * n_windows
    i = 0
    while i < len(ordered):
        threshold = ordered[i].anomaly_score
        while i < len(ordered) and ordered[i].anomaly_score >= threshold:
            row = ordered[i]
            if row.window is None:
                fp_sum += profile.fp_weight * row.weight
                fp += 1
            else:
                gain = profile.tp_weight * row.weight
                old = best.get(row.window, -profile.fn_weight)
                if gain > old:
                    window_sum += gain - old
                    best[row.window] = gain
                tp += 1
            i += 1
        out.append(ThresholdScore(threshold, window_sum + fp_sum, tp, fp))
    return out


def score_at(rows: Sequence[Row], n_windows: int, profile: Profile, threshold: float) -> float:
    """Raw score with detections = rows whose score is >= threshold."""
    best: dict[int, float] = {}
    fp_sum = 0.0
    for row in rows:
        if row.anomaly_score < threshold:
            continue
        if row.window is None:
            fp_sum += profile.fp_weight * row.weight
        else:
            gain = profile.tp_weight * row.weight
            best[row.window] = max(best.get(row.window, gain), gain)
    missed = n_windows - len(best)
    return sum(best.values()) - profile.fn_weight * missed + fp_sum


def normalise(raw: float, n_windows: int, profile: Profile) -> float:
    """0 for the null detector (-fn per window), 100 for the perfect one (+tp per window).

    >>> normalise(46.6344501971, 116, PROFILES["standard"])  # numenta's published raw score
    70.10105611...
    """
    null = -profile.fn_weight * n_windows
    perfect = profile.tp_weight * n_windows
    return 100.0 * (raw - null) / (perfect - null)


@dataclass(frozen=True, slots=True)
class CorpusResult:
    profile: str
    threshold: float
    raw: float
    normalised: float
    tp: int
    fp: int


Files = Mapping[str, tuple[int, Sequence[tuple[int, int]], Sequence[float]]]


def _corpus_rows(files: Files) -> tuple[list[Row], int]:
    rows: list[Row] = []
    n_windows = 0
    for n_rows, windows, scores in files.values():
        rows.extend(sweep_rows(n_rows, windows, scores, n_windows))
        n_windows += len(windows)
    return rows, n_windows


def score_corpus_at(files: Files, profile_name: str, threshold: float) -> float:
    """Raw corpus score at a given threshold (to compare with NAB's own threshold file)."""
    rows, n_windows = _corpus_rows(files)
    return score_at(rows, n_windows, PROFILES[profile_name], threshold)


def score_corpus(files: Files, profile_name: str) -> CorpusResult:
    """Best corpus threshold and its normalised score; files map name -> (rows, windows, scores)."""
    profile = PROFILES[profile_name]
    rows, n_windows = _corpus_rows(files)
    table = score_by_threshold(rows, n_windows, profile)
    top = max(table, key=lambda t: t.score)
    return CorpusResult(
        profile_name, top.threshold, top.score, normalise(top.score, n_windows, profile),
        top.tp, top.fp,
    )  # fmt: skip
