from __future__ import annotations

import math
import pickle
import random

import pytest

from detector.anomaly.detectors import (
    DEFAULT_UNIVARIATE,
    MULTIVARIATE,
    SERIES_ONLY,
    UNIVARIATE,
    UnivariateDetector,
    Verdict,
    make_multivariate,
    make_univariate,
)

HOUR_ROWS = 60


def wave(i: int, rng: random.Random) -> float:
    """A daily wave (1-minute rows) with noise: what a tenant's spend per minute looks like."""
    return 100.0 + 20.0 * math.sin(2 * math.pi * i / 1440) + rng.gauss(0.0, 2.0)


def trained(name: str, rows: int, seed: int = 1, **kwargs: float) -> UnivariateDetector:
    rng = random.Random(seed)
    model = make_univariate(name, interval_s=60, **kwargs)  # type: ignore[arg-type]
    for i in range(rows):
        model.learn_one(i * 60.0, wave(i, rng))
    return model


@pytest.mark.parametrize("name", UNIVARIATE)
def test_spike_is_flagged_and_normal_points_sit_in_the_band(name: str) -> None:
    rng = random.Random(7)
    model = make_univariate(name, interval_s=60)
    inside = total = 0
    for i in range(2 * 1440):
        x = wave(i, rng)
        verdict = model.score_one(i * 60.0, x)
        if verdict.warm:
            total += 1
            inside += verdict.low <= x <= verdict.high
            assert (verdict.score >= 0.5) == (not verdict.low <= x <= verdict.high)
        model.learn_one(i * 60.0, x)
    assert total > 1000
    assert inside / total > 0.99
    spike = model.score_one(2 * 1440 * 60.0, 400.0)
    assert spike.warm
    assert spike.score > 0.9
    assert spike.high < 400.0
    assert spike.low < spike.expected < spike.high


@pytest.mark.parametrize("name", UNIVARIATE)
def test_step_up_is_flagged_on_its_first_row(name: str) -> None:
    rng = random.Random(3)
    model = make_univariate(name, interval_s=60)
    for i in range(2 * 1440):
        model.learn_one(i * 60.0, rng.gauss(100.0, 2.0))
    before = model.score_one(2 * 1440 * 60.0, 101.0)
    step = model.score_one(2 * 1440 * 60.0, 130.0)  # 15 standard deviations up
    assert before.score < 0.5
    assert step.score > 0.9


@pytest.mark.parametrize("name", UNIVARIATE)
def test_higher_sensitivity_narrows_the_band(name: str) -> None:
    def width(sensitivity: float) -> float:
        v = trained(name, 2 * 1440, sensitivity=sensitivity).score_one(2 * 1440 * 60.0, 100.0)
        return v.high - v.low

    assert width(0.9) < width(0.5) < width(0.1)


@pytest.mark.parametrize("name", UNIVARIATE)
def test_not_warm_before_the_warmup_rows(name: str) -> None:
    model = make_univariate(name, interval_s=60, warmup=30)
    verdicts: list[Verdict] = []
    for i in range(30):
        verdicts.append(model.score_one(i * 60.0, 1e6 if i == 29 else 5.0 + i % 2))
        model.learn_one(i * 60.0, 5.0 + i % 2)
    assert not any(v.warm for v in verdicts)
    assert all(v.score == 0.0 for v in verdicts)  # even the wild value on row 29
    assert model.score_one(30 * 60.0, 5.0).warm


def test_seasonal_waits_for_one_season_by_default() -> None:
    model = trained("seasonal", 1440)
    assert not model.score_one(1440 * 60.0, 100.0).warm
    assert trained("seasonal", 1440 + 30).score_one(1470 * 60.0, 100.0).warm


def test_flat_series_does_not_give_an_empty_band() -> None:
    model = make_univariate("default", interval_s=60)
    for i in range(500):
        model.learn_one(i * 60.0, 3.0)
    same = model.score_one(500 * 60.0, 3.0)
    assert same.warm and same.score < 1e-6
    assert same.low < 3.0 < same.high
    assert model.score_one(500 * 60.0, 30.0).score > 0.95


@pytest.mark.parametrize("name", UNIVARIATE)
def test_pickle_roundtrip_keeps_every_answer(name: str) -> None:
    model = trained(name, 1600)
    copy = pickle.loads(pickle.dumps(model))  # noqa: S301 (our own bytes, just written)
    rng = random.Random(99)
    for i in range(1600, 1700):
        x = wave(i, rng)
        assert copy.score_one(i * 60.0, x) == model.score_one(i * 60.0, x)
        model.learn_one(i * 60.0, x)
        copy.learn_one(i * 60.0, x)


def test_default_is_one_of_the_names() -> None:
    assert DEFAULT_UNIVARIATE in UNIVARIATE
    assert type(make_univariate()) is type(make_univariate(DEFAULT_UNIVARIATE))


def test_unknown_names_are_refused_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as exc:
        make_univariate("prophet")
    assert str(exc.value) == (
        "unknown univariate detector 'prophet'; allowed: default, "
        + ", ".join((*UNIVARIATE, *SERIES_ONLY))
    )
    with pytest.raises(ValueError) as exc:
        make_multivariate("lof")
    assert str(exc.value) == "unknown multivariate detector 'lof'; allowed: " + ", ".join(
        MULTIVARIATE
    )


@pytest.mark.parametrize("sensitivity", [-0.1, 1.5, math.nan])
def test_sensitivity_outside_0_1_is_refused(sensitivity: float) -> None:
    with pytest.raises(ValueError, match=r"sensitivity: must be within \[0, 1\]"):
        make_univariate(sensitivity=sensitivity)
    with pytest.raises(ValueError, match=r"sensitivity: must be within \[0, 1\]"):
        make_multivariate(sensitivity=sensitivity)


def test_bad_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s: must be > 0, got 0"):
        make_univariate(interval_s=0)


def features(rng: random.Random) -> dict[str, float]:
    requests = rng.gauss(100.0, 5.0)
    return {
        "cost_usd": requests * 0.01 * rng.uniform(0.9, 1.1),
        "requests": requests,
        "output_input_ratio": rng.uniform(0.2, 0.4),
        "distinct_models": float(rng.choice([2, 3])),
        "error_rate": rng.uniform(0.0, 0.02),
    }


def test_hst_flags_an_abusive_interval_and_passes_normal_ones() -> None:
    rng = random.Random(5)
    model = make_multivariate("hst", interval_s=60)
    normal_scores: list[float] = []
    for i in range(1500):
        x = features(rng)
        score = model.score_one(i * 60.0, x)
        if i >= 1000:
            normal_scores.append(score)
        model.learn_one(i * 60.0, x)
    abuse = {
        "cost_usd": 40.0,
        "requests": 900.0,
        "output_input_ratio": 6.0,
        "distinct_models": 1.0,
        "error_rate": 0.5,
    }
    assert model.score_one(1500 * 60.0, abuse) > 0.6
    assert sum(s >= 0.5 for s in normal_scores) / len(normal_scores) < 0.02
    assert all(0.0 <= s <= 1.0 for s in normal_scores)


def test_hst_is_silent_while_warming_up_and_pickles() -> None:
    rng = random.Random(6)
    model = make_multivariate("hst", interval_s=60, warmup=100)
    for i in range(100):
        assert model.score_one(i * 60.0, {"cost_usd": 1e9}) == 0.0
        model.learn_one(i * 60.0, features(rng))
    copy = pickle.loads(pickle.dumps(model))  # noqa: S301 (our own bytes, just written)
    x = features(rng)
    assert copy.score_one(100 * 60.0, x) == model.score_one(100 * 60.0, x)


@pytest.mark.parametrize("name", UNIVARIATE)
def test_band_widens_after_a_spike_and_relaxes_again(name: str) -> None:
    rng = random.Random(3)
    model = make_univariate(name, interval_s=60)
    row = 0

    def feed(rows: int) -> None:
        nonlocal row
        for _ in range(rows):
            model.learn_one(row * 60.0, rng.gauss(100.0, 2.0))
            row += 1

    def spike() -> Verdict:
        nonlocal row
        verdict = model.score_one(row * 60.0, 140.0)
        model.learn_one(row * 60.0, 140.0)
        row += 1
        return verdict

    feed(2 * 1440)
    first = spike()
    feed(60)
    aftershock = spike()  # an hour later: the band is wider, the same spike less surprising
    feed(3 * 1440)
    later = spike()  # three days later the band has relaxed
    assert first.score > 0.99
    assert aftershock.high - aftershock.low > 2 * (first.high - first.low)
    assert aftershock.score < first.score
    assert later.score > 0.99
    assert later.high - later.low < 1.5 * (first.high - first.low)


@pytest.mark.parametrize("name", UNIVARIATE)
def test_a_lone_spike_does_not_make_the_next_normal_rows_anomalous(name: str) -> None:
    rng = random.Random(11)
    model = trained(name, 2 * 1440)
    row = 2 * 1440
    assert model.score_one(row * 60.0, 400.0).score > 0.9
    model.learn_one(row * 60.0, 400.0)
    for row in range(2 * 1440 + 1, 2 * 1440 + 30):
        x = wave(row, rng)
        assert model.score_one(row * 60.0, x).score < 0.5
        model.learn_one(row * 60.0, x)


@pytest.mark.parametrize("name", UNIVARIATE)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_values_are_refused(name: str, bad: float) -> None:
    model = trained(name, 200)
    with pytest.raises(ValueError, match="x: must be a finite number, got"):
        model.score_one(0.0, bad)
    with pytest.raises(ValueError, match="x: must be a finite number, got"):
        model.learn_one(0.0, bad)


def test_a_huge_value_does_not_overflow_the_model() -> None:
    model = make_univariate("default", interval_s=60)
    for i in range(200):
        model.learn_one(i * 60.0, 0.0)
    model.learn_one(200 * 60.0, 1e300)
    assert model.score_one(201 * 60.0, 1e300).score <= 1.0


def test_hst_refuses_a_non_finite_feature() -> None:
    model = make_multivariate("hst", interval_s=60, warmup=0)
    with pytest.raises(ValueError, match=r"x\['cost_usd'\]: must be a finite number, got nan"):
        model.learn_one(0.0, {"cost_usd": math.nan, "requests": 1.0})
