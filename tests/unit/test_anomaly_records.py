from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from detector.anomaly.records import RECORD_AFTER_ROWS, RecordModel
from detector.anomaly.schema import AnomalyRule
from detector.anomaly.series import Series, run_series
from detector.anomaly.univariate import CombinedModel


def uniform_rows(n: int, seed: int = 5) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.0, 10.0) for _ in range(n)]


def fed(rows: list[float]) -> tuple[RecordModel, CombinedModel]:
    record = RecordModel(sensitivity=0.5, interval_s=60, warmup=None)
    combined = CombinedModel(sensitivity=0.5, interval_s=60, warmup=None)
    for i, x in enumerate(rows):
        record.learn_one(i * 60.0, x)
        combined.learn_one(i * 60.0, x)
    return record, combined


def test_a_new_record_inside_the_band_scores_one() -> None:
    rows = uniform_rows(RECORD_AFTER_ROWS + 100)
    record, combined = fed(rows)
    ts = len(rows) * 60.0
    x = max(rows) + 0.5  # 5% of the range above the record high
    plain = combined.score_one(ts, x)
    assert plain.warm
    assert plain.low <= x <= plain.high  # the band alone does not see it
    assert plain.score < 0.5
    assert record.score_one(ts, x).score == 1.0
    assert record.score_one(ts, min(rows) - 0.5).score == 1.0  # and a record low


def test_rows_within_the_margin_or_the_range_keep_the_band_verdict() -> None:
    rows = uniform_rows(RECORD_AFTER_ROWS + 100)
    record, combined = fed(rows)
    ts = len(rows) * 60.0
    for x in (5.0, max(rows) + 0.1):  # inside the range; beyond it by 1% only
        assert record.score_one(ts, x) == combined.score_one(ts, x)


def test_records_count_only_after_enough_rows() -> None:
    rows = uniform_rows(RECORD_AFTER_ROWS - 1)
    record, combined = fed(rows)
    ts = len(rows) * 60.0
    x = max(rows) + 0.5
    assert combined.score_one(ts, x).warm
    assert record.score_one(ts, x).score < 0.5
    record.learn_one(ts, 5.0)
    assert record.score_one(ts + 60.0, x).score == 1.0


def test_record_scores_files_and_the_worker_may_not_use_it() -> None:
    values = [*uniform_rows(RECORD_AFTER_ROWS + 50), 11.0]
    ts_s = [i * 60.0 for i in range(len(values))]
    series = Series([str(t) for t in ts_s], [str(v) for v in values], ts_s, values)
    assert [v.score for v in run_series(series, "record")][-1] == 1.0
    assert [v.score for v in run_series(series, "combined")][-1] < 0.5
    with pytest.raises(ValidationError, match="must be default or one of"):
        AnomalyRule.model_validate({"interval": "1m", "detector": "record"})
