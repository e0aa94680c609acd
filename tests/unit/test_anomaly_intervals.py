"""Pure interval book-keeping: intervals close on event time, never on the wall clock."""

from __future__ import annotations

from detector.anomaly.intervals import SOURCE_IDLE_MS, IntervalBook
from detector.anomaly.outliers import OutlierWatch
from detector.schemas import Scope, UsageEvent

T0 = 1_764_000_000_000 - 1_764_000_000_000 % 60_000


def event(i: int, ts_ms: int, user: str = "u1") -> UsageEvent:
    return UsageEvent(event_id=f"e{i}", ts_ms=ts_ms, tenant_id="acme", user_id=user,
                      feature="chat", model="gpt-4o")  # fmt: skip


def test_an_interval_closes_once_event_time_passes_its_end_plus_grace() -> None:
    book = IntervalBook([Scope.tenant, Scope.user], interval_s=60, grace_s=10)
    clock = T0 + 10 * 60_000  # the wall clock is far ahead: it must not close anything
    book.add(event(1, T0 + 1_000), 2_000_000, clock)
    book.add(event(2, T0 + 59_000, "u2"), 1_000_000, clock)
    assert book.close_due(clock) == []
    book.add(event(3, T0 + 65_000), 500_000, clock)  # 5 s into the next minute: within grace
    assert book.close_due(clock) == []
    book.add(event(4, T0 + 70_000), 500_000, clock)
    closed = {c.entity: c for c in book.close_due(clock)}
    assert set(closed) == {("acme", Scope.tenant, "acme"), ("acme", Scope.user, "u1"),
                           ("acme", Scope.user, "u2")}  # fmt: skip
    tenant = closed[("acme", Scope.tenant, "acme")]
    assert (tenant.start_ms, tenant.cost_usd, tenant.requests) == (T0, 3.0, 2)
    assert tenant.parts[(Scope.user, "u1")] == 2_000_000
    assert tenant.parts[(Scope.feature, "chat")] == 3_000_000
    # An event for the closed minute is too late for the models (the windows still count it).
    assert book.add(event(5, T0 + 30_000), 1_000_000, clock) is False
    assert book.late_events == 1
    assert [c.start_ms for c in book.close_all()] == [T0 + 60_000, T0 + 60_000]


def test_an_event_from_the_future_cannot_close_the_current_interval() -> None:
    book = IntervalBook([Scope.tenant], interval_s=60, grace_s=0)
    clock = T0 + 30_000
    book.add(event(1, T0 + 1_000), 1, clock)
    book.add(event(2, T0 + 290_000), 1, clock)  # five minutes ahead of the clock
    assert book.close_due(clock) == []


def test_a_partition_read_ahead_does_not_close_what_a_slower_one_still_feeds() -> None:
    """Catching up on a backlog, partition 0 is read ten minutes of event time ahead of
    partition 1; partition 1's minutes stay open until it has passed them too."""
    book = IntervalBook([Scope.tenant], interval_s=60, grace_s=0)
    clock = T0 + 3_600_000  # the backlog is an hour old
    book.join([0, 1], clock)
    for minute in range(10):
        book.add(event(minute, T0 + minute * 60_000 + 1_000), 1, clock, source=0)
    assert book.close_due(clock) == []  # partition 1 has delivered nothing yet
    slow = UsageEvent(
        event_id="s1", ts_ms=T0 + 2_000, tenant_id="beta", user_id="u9", model="gpt-4o"
    )
    assert book.add(slow, 5, clock, source=1) is True  # not late: its minute is still open
    closed = book.close_due(clock)
    assert closed == []  # partition 1 is still inside the first minute
    later = UsageEvent(
        event_id="s2", ts_ms=T0 + 185_000, tenant_id="beta", user_id="u9", model="gpt-4o"
    )
    book.add(later, 7, clock, source=1)
    closed = book.close_due(clock)
    assert sorted({c.start_ms for c in closed}) == [T0, T0 + 60_000, T0 + 120_000]
    beta = [c for c in closed if c.entity == ("beta", Scope.tenant, "beta")]
    assert [(c.start_ms, c.cost_usd_micros) for c in beta] == [(T0, 5)]
    assert book.late_events == 0


def test_an_idle_partition_stops_holding_event_time_back() -> None:
    book = IntervalBook([Scope.tenant], interval_s=60, grace_s=0)
    clock = T0 + 60_000
    book.join([0, 1], clock)  # partition 1 never delivers
    book.add(event(1, T0 + 1_000), 1, clock, source=0)
    book.add(event(2, T0 + 61_000), 1, clock, source=0)
    assert book.close_due(clock) == []
    clock += SOURCE_IDLE_MS + 1
    book.add(event(3, T0 + 62_000), 1, clock, source=0)
    assert [c.start_ms for c in book.close_due(clock)] == [T0]
    book.leave([0, 1])
    assert book.sources == {}


def test_when_every_partition_is_quiet_event_time_follows_the_clock() -> None:
    """A lull: the last minute before it is scored once the clock is past its end by the idle
    time and the grace, without waiting for another event."""
    book = IntervalBook([Scope.tenant], interval_s=60, grace_s=10)
    clock = T0 + 30_000
    book.add(event(1, T0 + 29_000), 1, clock, source=0)
    assert book.close_due(clock) == []
    clock = T0 + 60_000 + SOURCE_IDLE_MS + 10_000 - 1  # just short of the grace after its end
    assert book.close_due(clock) == []
    clock += 1
    assert [c.start_ms for c in book.close_due(clock)] == [T0]


def test_a_regular_user_is_quiet_until_a_far_dearer_call() -> None:
    watch = OutlierWatch(factor=20, min_cost_usd=1.0, warmup=20, max_entities=100)
    key = ("acme", Scope.user, "u1")
    costs = [0.02 + 0.01 * (i % 5) for i in range(40)]
    assert [watch.observe(key, c) for c in costs] == [None] * 40
    assert watch.observe(key, 0.5) is None  # 12x: unusual, but not 20x and below $1
    hit = watch.observe(key, 2.5)
    assert hit is not None and hit.cost_usd == 2.5 and 0.02 < hit.typical_usd < 0.05
    # The outlier was not learned: the same call fires again.
    assert watch.observe(key, 2.5) is not None


def test_outlier_memory_is_capped() -> None:
    watch = OutlierWatch(factor=20, min_cost_usd=1.0, warmup=1, max_entities=100)
    for i in range(250):
        watch.observe(("acme", Scope.user, f"u{i}"), 0.01)
    assert len(watch) == 100
