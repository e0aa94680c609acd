from __future__ import annotations

import random

from detector.anomaly.detectors import UNIVARIATE, Verdict, make_univariate
from detector.anomaly.explain import IntervalHit
from detector.anomaly.intervals import ClosedInterval, EntityKey
from detector.anomaly.schema import AnomalyRule
from detector.anomaly.state import EntityState
from detector.anomaly.watch import _fold_into_tenants, _judge, cold_rows
from detector.schemas import Scope

MINUTE_MS = 60_000
TENANT: EntityKey = ("acme", Scope.tenant, "acme")


def rule(**fields: object) -> AnomalyRule:
    return AnomalyRule.model_validate({"warmup": 20, "outliers": None, **fields})


def interval(
    minute: int, cost_usd: float, calls: int = 10, key: EntityKey = TENANT
) -> ClosedInterval:
    return ClosedInterval(key, minute * MINUTE_MS, round(cost_usd * 1e6), calls, {})


def calm_state(r: AnomalyRule, minutes: int = 40, seed: int = 1) -> EntityState:
    """A tenant whose minutes cost about half a cent (ten calls of $0.0005)."""
    rng = random.Random(seed)
    detector = make_univariate(r.detector, sensitivity=r.sensitivity, warmup=r.warmup)
    state = EntityState("test", detector)
    for minute in range(minutes):
        assert _judge(r, state, interval(minute, 0.005 * rng.uniform(0.8, 1.2))) is None
    return state


def test_a_run_of_small_anomalous_intervals_pages_once_it_cost_min_spend() -> None:
    r = rule(min_spend_usd=0.5)
    state = calm_state(r)
    # The tenant moves to a model sixteen times dearer: $0.08 a minute, far under $0.5.
    hits = [_judge(r, state, interval(40 + i, 0.08)) for i in range(8)]
    first = next(i for i, h in enumerate(hits) if h is not None)
    assert first == 6, "0.075 above expected a minute reaches $0.5 in the seventh minute"
    hit = hits[first]
    assert hit is not None
    assert hit.run_intervals == 7 and 0.5 <= hit.run_excess_usd < 0.6
    assert hit.usual_call_usd is not None and 0.0004 < hit.usual_call_usd < 0.0006
    assert state.intervals == 40, "the anomalous minutes are not learned"


def test_a_calm_interval_ends_the_run() -> None:
    r = rule(min_spend_usd=0.5)
    state = calm_state(r)
    for i in range(5):
        assert _judge(r, state, interval(40 + i, 0.08)) is None
    assert _judge(r, state, interval(45, 0.005)) is None
    assert state.anomalous_run == 0 and state.run_excess_usd == 0.0
    # The next run starts from nothing: again seven minutes to reach $0.5.
    hits = [_judge(r, state, interval(46 + i, 0.08)) for i in range(7)]
    assert hits[:6] == [None] * 6 and hits[6] is not None


def test_a_level_shift_being_relearned_does_not_widen_the_band() -> None:
    r = rule(min_spend_usd=0.01, relearn_after=5)
    state = calm_state(r, minutes=300)
    assert state.detector is not None
    before = state.detector.score_one(300 * 60.0, 0.005).high
    # Sixty minutes at ten times the level: alerted, then learned as the new level.
    for i in range(60):
        _judge(r, state, interval(300 + i, 0.05))
    for i in range(60):
        _judge(r, state, interval(360 + i, 0.005))
    assert not state.episode
    after = state.detector.score_one(420 * 60.0, 0.005).high
    assert after < 2 * before, (before, after)
    # The next incident of the same size is anomalous again at once.
    assert _judge(r, state, interval(420, 0.05)) is not None


def test_a_level_shift_learned_with_calibration_does_widen_the_band() -> None:
    # The contrast that makes the test above meaningful: the old behaviour hides the next one.
    detector = make_univariate("robust", sensitivity=0.8, warmup=20)
    rng = random.Random(1)
    for i in range(300):
        detector.learn_one(i * 60.0, 0.005 * rng.uniform(0.8, 1.2))
    before = detector.score_one(300 * 60.0, 0.005).high
    for i in range(300, 360):
        detector.learn_one(i * 60.0, 0.05)
    for i in range(360, 420):
        detector.learn_one(i * 60.0, 0.005)
    assert detector.score_one(420 * 60.0, 0.005).high > 3 * before


def test_scope_mates_fold_into_a_tenant_anomaly_while_it_lasts() -> None:
    verdict = Verdict(1.0, 0.1, 0.0, 0.2, True)
    user = IntervalHit(interval(5, 1.0, key=("acme", Scope.user, "u1")), verdict, [])
    other = IntervalHit(interval(5, 1.0, key=("bolt", Scope.user, "u9")), verdict, [])
    assert _fold_into_tenants([user, other], paging={"acme"}) == [other]
    assert _fold_into_tenants([user, other], paging=set()) == [user, other]
    tenant = IntervalHit(interval(5, 2.0), verdict, [])
    assert _fold_into_tenants([tenant, user], paging=set()) == [tenant]


def test_a_model_built_at_the_end_of_the_warm_up_judges_as_one_built_at_the_start() -> None:
    # States start without a model; the intervals before the warm-up ends wait and are learned
    # when it is built. Every verdict after must be the one an eagerly built model gives.
    for detector in ("robust", "combined"):
        r = rule(detector=detector, min_spend_usd=0.01)
        eager = EntityState("test", make_univariate(detector, sensitivity=r.sensitivity, warmup=20))
        lazy = EntityState("test", None)
        rng = random.Random(5)
        costs = [0.005 * rng.uniform(0.5, 1.5) for _ in range(200)]
        costs[60:64] = [0.2] * 4  # an incident after the warm-up
        for minute, cost in enumerate(costs):
            hit_eager = _judge(r, eager, interval(minute, cost))
            hit_lazy = _judge(r, lazy, interval(minute, cost))
            assert (hit_eager is None) == (hit_lazy is None), (detector, minute)
            if hit_eager is not None and hit_lazy is not None:
                assert hit_eager.verdict == hit_lazy.verdict
        assert lazy.detector is not None and len(lazy.cold) == 0
        assert lazy.detector.score_one(200 * 60.0, 0.005) == eager.detector.score_one(  # type: ignore[union-attr]
            200 * 60.0, 0.005
        )


def test_no_worker_detector_judges_before_cold_rows() -> None:
    # cold_rows must never exceed a model's real warm-up, or the lazy model would miss an
    # interval an eager one could have flagged.
    for warmup in (None, 20):
        r = rule(warmup=warmup)
        for name in UNIVARIATE:
            model = make_univariate(name, sensitivity=0.8, warmup=warmup)
            for row in range(cold_rows(r)):
                assert not model.score_one(row * 60.0, 1.0).warm, (name, warmup, row)
                model.learn_one(row * 60.0, 1.0)
