"""Read a `timestamp,value` series (NAB's format) and run a univariate model over it."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from detector.anomaly.detectors import (
    DEFAULT_SERIES,
    UnivariateDetector,
    Verdict,
    make_univariate,
)
from detector.errors import DetectorError


class SeriesError(DetectorError):
    """A series file is unreadable; the message names the file, the row and the value."""


@dataclass(frozen=True, slots=True)
class Series:
    stamps: list[str]  # as written in the file, echoed in the output
    value_texts: list[str]  # likewise
    ts_s: list[float]  # epoch seconds
    values: list[float]


def parse_stamp(text: str) -> float:
    """Epoch seconds of `2014-04-01 00:00:00` (UTC when no offset is given), or ISO 8601.

    >>> parse_stamp("1970-01-01 00:01:00")
    60.0
    """
    stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def read_series(path: Path) -> Series:
    """Rows of a CSV with a `timestamp,value` header, in file order (NAB has a few out of order)."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise SeriesError(f"{path}: cannot read: {exc.strerror}") from exc
    stamps: list[str] = []
    value_texts: list[str] = []
    ts_s: list[float] = []
    values: list[float] = []
    with handle:
        reader = csv.reader(handle)
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:2] != ["timestamp", "value"]:
            raise SeriesError(f"{path}: line 1: expected header 'timestamp,value', got {header!r}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise SeriesError(f"{path}: line {line_no}: expected 2 columns, got {row!r}")
            try:
                ts = parse_stamp(row[0])
            except ValueError as exc:
                raise SeriesError(
                    f"{path}: line {line_no}: timestamp: bad value {row[0]!r}"
                ) from exc
            try:
                value = float(row[1])
            except ValueError as exc:
                raise SeriesError(f"{path}: line {line_no}: value: bad number {row[1]!r}") from exc
            if value != value or value in (float("inf"), float("-inf")):
                raise SeriesError(f"{path}: line {line_no}: value: not finite {row[1]!r}")
            stamps.append(row[0])
            value_texts.append(row[1].strip())
            ts_s.append(ts)
            values.append(value)
    if len(values) < 2:
        raise SeriesError(f"{path}: needs at least 2 rows, got {len(values)}")
    return Series(stamps, value_texts, ts_s, values)


def infer_interval_s(ts_s: Sequence[float]) -> int:
    """The series' sampling interval: the median gap between rows, at least one second.

    >>> infer_interval_s([0.0, 300.0, 600.0, 1200.0])
    300
    """
    gaps = [b - a for a, b in zip(ts_s, ts_s[1:], strict=False) if b > a]
    return max(1, round(statistics.median(gaps))) if gaps else 1


def run_series(
    series: Series, name: str = "default", *, sensitivity: float = 0.5
) -> Iterator[Verdict]:
    """Score each row before learning it, the way the worker sees a live stream.

    "default" is DEFAULT_SERIES (the worker's "default" is DEFAULT_UNIVARIATE). The model is
    built at once, so a bad name or sensitivity raises here, not on iteration.
    """
    name = DEFAULT_SERIES if name == "default" else name
    model = make_univariate(name, sensitivity=sensitivity, interval_s=infer_interval_s(series.ts_s))
    return _run(model, series)


def _run(model: UnivariateDetector, series: Series) -> Iterator[Verdict]:
    for ts, value in zip(series.ts_s, series.values, strict=True):
        verdict = model.score_one(ts, value)
        model.learn_one(ts, value)
        yield verdict
