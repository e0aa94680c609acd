from __future__ import annotations

import math

import pytest

from detector.anomaly.nabscore import (
    PROFILES,
    scaled_sigmoid,
    score_at,
    score_corpus,
    score_corpus_at,
    sweep_rows,
)

# One file of 20 rows, one window over rows 10-13 (width 4). Probation is floor(0.15 * 20) = 3
# rows. Hand-computed weights:
#   detection at row 11: position -(13 - 11 + 1) / 4 = -0.75;
#     (2 / (1 + e^-3.75) - 1) / (2 / (1 + e^-5) - 1) = 0.954045 / 0.986614 = 0.966989
#   false positive at row 5, before any window: -1 x fp weight
#   false positive at row 15: position |13 - 15| / (4 - 1) = 0.6667;
#     2 / (1 + e^3.3333) - 1 = -0.931109, times fp weight
#   detection at row 1: inside probation, counts for nothing
N_ROWS = 20
WINDOWS = [(10, 13)]
TP_11 = 0.966989
FP_15 = -0.931109


def scores(marks: dict[int, float]) -> list[float]:
    return [marks.get(i, 0.0) for i in range(N_ROWS)]


def test_scaled_sigmoid_by_hand() -> None:
    assert scaled_sigmoid(-0.75) == pytest.approx(0.954045, abs=1e-6)
    assert scaled_sigmoid(2 / 3) == pytest.approx(FP_15, abs=1e-6)
    assert scaled_sigmoid(3.01) == -1.0


def test_rows_skip_probation_and_carry_hand_computed_weights() -> None:
    rows = sweep_rows(N_ROWS, WINDOWS, scores({}), first_window_id=0)
    assert len(rows) == N_ROWS - 3
    by_index = {i + 3: row for i, row in enumerate(rows)}
    assert by_index[11].window == 0
    assert by_index[11].weight == pytest.approx(TP_11, abs=1e-6)
    assert by_index[5].window is None and by_index[5].weight == -1.0
    assert by_index[15].weight == pytest.approx(FP_15, abs=1e-6)


@pytest.mark.parametrize(
    ("profile", "expected_raw"),
    [
        ("standard", TP_11 - 0.11 + 0.11 * FP_15),
        ("reward_low_FP_rate", TP_11 - 0.22 + 0.22 * FP_15),
        ("reward_low_FN_rate", TP_11 - 0.11 + 0.11 * FP_15),
    ],
)
def test_raw_score_at_a_threshold(profile: str, expected_raw: float) -> None:
    rows = sweep_rows(N_ROWS, WINDOWS, scores({1: 0.9, 5: 0.6, 11: 0.8, 12: 0.7, 15: 0.6}), 0)
    # Rows 11 and 12 both detect the window; only the earlier (bigger) weight counts.
    assert score_at(rows, 1, PROFILES[profile], 0.5) == pytest.approx(expected_raw, abs=1e-5)


def test_a_missed_window_costs_the_fn_weight() -> None:
    rows = sweep_rows(N_ROWS, WINDOWS, scores({5: 0.9}), 0)
    assert score_at(rows, 1, PROFILES["reward_low_FN_rate"], 0.5) == pytest.approx(-2.0 - 0.11)


def test_threshold_is_optimised_and_normalised() -> None:
    # At 0.8 only row 11 detects (row 1 is in probation): raw 0.966989, the best; lower
    # thresholds add the two false positives.
    files = {"f.csv": (N_ROWS, WINDOWS, scores({1: 1.0, 5: 0.5, 11: 0.8, 15: 0.7}))}
    result = score_corpus(files, "standard")
    assert result.threshold == 0.8
    assert result.raw == pytest.approx(TP_11, abs=1e-6)
    # null detector = -1 (window missed), perfect = +1: 100 * (0.966989 + 1) / 2
    assert result.normalised == pytest.approx(98.34945, abs=1e-4)
    low_fn = score_corpus(files, "reward_low_FN_rate")
    assert low_fn.normalised == pytest.approx(100 * (TP_11 + 2) / 3, abs=1e-4)


def test_detecting_everything_loses_to_never_detecting() -> None:
    # 200 rows, probation 30: detecting every row finds the window but pays about 166 false
    # positives, so the best threshold is "never", which scores exactly the null detector's 0.
    every = {"f.csv": (200, [(100, 103)], [1.0] * 200)}
    result = score_corpus(every, "standard")
    assert math.isinf(result.threshold)
    assert result.normalised == 0.0


def test_corpus_score_at_a_given_threshold() -> None:
    files = {"f.csv": (N_ROWS, WINDOWS, scores({1: 1.0, 5: 0.5, 11: 0.8, 15: 0.7}))}
    assert score_corpus_at(files, "standard", 0.7) == pytest.approx(TP_11 + 0.11 * FP_15, abs=1e-6)
