"""Anomaly models over real Redis and Kafka, through `pipeline.handle_batch` as the worker runs it:
an interval spike alerts with its explanation, warm-up and min spend keep quiet, an anomalous
interval is not learned, one huge call is an outlier, and an enforcing section stores decisions."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from detector import keys
from detector.anomaly.watch import AnomalyWatch
from detector.pipeline import BatchResult, Deps, Turns, handle_batch
from detector.schemas import Alert, Scope
from detector.timefmt import rfc3339
from detector.windows.counters import WindowStore

from .conftest import event_bytes, read_topic

MINUTE_MS = 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def minute_of_calls(
    start_ms: int, minute: int, calls: int, cost_usd: tuple[float, float], seed: int, **extra: str
) -> list[tuple[bytes | None, bytes]]:
    """`calls` events of tenant acme spread over one minute, four users, gpt-4o."""
    rng = random.Random(seed * 100_003 + minute)
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(calls):
        fields: dict[str, object] = {
            "event_id": f"m{minute}-{i}-{seed}",
            "ts": start_ms + minute * MINUTE_MS + i * (MINUTE_MS // (calls + 1)),
            "tenant_id": "acme",
            "user_id": f"u{rng.randrange(4)}",
            "feature": "chat",
            "model": "gpt-4o",
            "cost_usd": round(rng.uniform(*cost_usd), 6),
        }
        fields.update(extra)
        out.append((b"acme", event_bytes(**fields)))
    return out


async def play(
    deps: Deps, start_ms: int, minutes: range, calls: int, cost_usd: tuple[float, float],
    seed: int = 1, **extra: str,
) -> list[BatchResult]:  # fmt: skip
    """One batch per minute of event time, in order."""
    results = []
    for minute in minutes:
        batch = minute_of_calls(start_ms, minute, calls, cost_usd, seed, **extra)
        results.append(await handle_batch(batch, deps, now_ms()))
    return results


def anomaly_alerts(results: list[BatchResult]) -> list[Alert]:
    return [a for r in results for a in r.alerts if a.kind.value == "anomaly"]


def with_models(deps: Deps, redis: Redis) -> Deps:
    return dataclasses.replace(deps, anomaly=AnomalyWatch(redis, deps.decisions))


RULES = """
anomaly:
  scopes: [tenant, user]
  warmup: {warmup}
  min_spend_usd: {min_spend}
  outliers: null
"""


async def test_spike_alerts_with_explanation_on_the_alerts_topic(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    deps = with_models(pipeline_deps_factory(RULES.format(warmup=20, min_spend=1)), redis)
    start = now_ms() - 90 * MINUTE_MS
    start -= start % MINUTE_MS
    calm = await play(deps, start, range(40), 10, (0.03, 0.07))
    assert anomaly_alerts(calm) == []
    # u2 turns into a loop: 150 extra calls of about $0.10 in minute 40.
    spike = minute_of_calls(start, 40, 150, (0.08, 0.12), seed=2, user_id="u2")
    await handle_batch(spike + minute_of_calls(start, 40, 10, (0.03, 0.07), 1), deps, now_ms())
    after = await play(deps, start, range(41, 43), 10, (0.03, 0.07))
    [alert] = anomaly_alerts(after)

    assert (alert.rule_id, alert.scope, alert.entity_id) == ("spend-anomaly", Scope.tenant, "acme")
    assert alert.window == "1m" and alert.metric == "cost_usd"
    assert alert.event_time.endswith(":00.000Z")
    assert alert.expected is not None and alert.band is not None and alert.score is not None
    assert alert.observed > 15 > alert.band[1] > alert.expected
    assert alert.score > 0.5
    top = alert.contributors[0]
    assert (top["scope"], top["id"]) == ("user", "u2")
    assert isinstance(top["share"], float) and top["share"] > 0.8
    assert "user u2" in alert.message and "expected $" in alert.message
    # The user's own anomaly in the same minute is folded into the tenant's alert.
    assert [a.entity_id for a in anomaly_alerts(after)] == ["acme"]

    published = await read_topic(deps.settings, keys.TOPIC_ALERTS, 1)
    body = orjson.loads(published[0].value)
    assert body["kind"] == "anomaly" and body["contributors"][0]["id"] == "u2"
    assert body["band"] == list(alert.band) and body["expected"] == alert.expected


async def test_no_alert_during_warm_up(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    deps = with_models(pipeline_deps_factory(RULES.format(warmup=30, min_spend=1)), redis)
    start = now_ms() - 60 * MINUTE_MS
    start -= start % MINUTE_MS
    results = await play(deps, start, range(15), 10, (0.03, 0.07))
    results.append(
        await handle_batch(minute_of_calls(start, 15, 300, (0.1, 0.2), 3), deps, now_ms())
    )
    results += await play(deps, start, range(16, 18), 10, (0.03, 0.07))
    assert anomaly_alerts(results) == []
    watch = deps.anomaly
    assert watch is not None and watch.stats.intervals_scored > 0


async def test_no_alert_below_min_spend_but_one_above_it(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    # The same tiny spike (about $0.30 where a minute costs $0.01) under two min spends.
    for min_spend, expected in ((1.0, []), (0.1, ["acme"])):
        await redis.flushdb()
        deps = with_models(pipeline_deps_factory(RULES.format(warmup=20, min_spend=min_spend)),
                           redis)  # fmt: skip
        start = now_ms() - 60 * MINUTE_MS
        start -= start % MINUTE_MS
        results = await play(deps, start, range(30), 10, (0.0008, 0.0012))
        spike = minute_of_calls(start, 30, 300, (0.0008, 0.0012), seed=5)
        results.append(await handle_batch(spike, deps, now_ms()))
        results += await play(deps, start, range(31, 32), 10, (0.0008, 0.0012))
        tenant_alerts = [a.entity_id for a in anomaly_alerts(results) if a.scope is Scope.tenant]
        assert tenant_alerts == expected, min_spend


async def test_anomalous_interval_is_not_learned(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    deps = with_models(pipeline_deps_factory(RULES.format(warmup=20, min_spend=1)), redis)
    watch = deps.anomaly
    assert watch is not None
    start = now_ms() - 60 * MINUTE_MS
    start -= start % MINUTE_MS
    await play(deps, start, range(31), 10, (0.03, 0.07))
    state = watch.state_of(("acme", Scope.tenant, "acme"))
    assert state is not None
    learned_before, usual_before = state.intervals, state.mean_usd

    # Two spiking minutes, closed by the calm minute after them.
    for minute in (31, 32):
        await handle_batch(minute_of_calls(start, minute, 300, (0.1, 0.2), 7), deps, now_ms())
    await play(deps, start, range(33, 35), 10, (0.03, 0.07))
    assert watch.stats.anomalous >= 2, "both spiking minutes are judged anomalous"
    # Minutes 30 and 33 closed normally and were learned; 31 and 32 were not.
    assert state.intervals == learned_before + 2
    assert state.mean_usd < usual_before * 1.5


async def test_one_huge_call_is_an_outlier(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    rules = """
anomaly:
  scopes: [tenant]
  outliers: {scopes: [user], warmup: 20, factor: 20, min_cost_usd: 0.5}
"""
    deps = with_models(pipeline_deps_factory(rules), redis)
    at = now_ms() - 10 * MINUTE_MS

    def call(i: int, output_tokens: int) -> tuple[bytes | None, bytes]:
        return (b"acme", event_bytes(event_id=f"c{i}", ts=at + i * 1000, tenant_id="acme",
                user_id="u1", api_key_id="k1", model="gpt-4o", input_tokens=800,
                output_tokens=output_tokens))  # fmt: skip

    usual = await handle_batch([call(i, 300 + i * 7) for i in range(30)], deps, now_ms())
    assert anomaly_alerts([usual]) == []
    huge = await handle_batch([call(30, 100_000)], deps, now_ms())
    [alert] = anomaly_alerts([huge])
    assert (alert.rule_id, alert.scope, alert.entity_id, alert.window) == (
        "cost-outlier", Scope.user, "u1", "call"
    )  # fmt: skip
    assert alert.observed > 1.0 and alert.expected is not None and alert.expected < 0.01
    assert alert.band is not None and alert.observed > alert.band[1]
    assert {"scope": "model", "id": "gpt-4o"} in alert.contributors
    assert "output_tokens 100000" in alert.message


async def test_throttle_is_stored_and_shadow_is_not(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    for shadow in (False, True):
        await redis.flushdb()
        rules = f"""
anomaly:
  scopes: [tenant]
  warmup: 20
  action: throttle
  for: 30m
  retry_after_s: 120
  shadow: {str(shadow).lower()}
  outliers: null
"""
        deps = with_models(pipeline_deps_factory(rules), redis)
        start = now_ms() - 60 * MINUTE_MS
        start -= start % MINUTE_MS
        results = await play(deps, start, range(30), 10, (0.03, 0.07))
        results.append(
            await handle_batch(minute_of_calls(start, 30, 300, (0.1, 0.2), 9), deps, now_ms())
        )
        results += await play(deps, start, range(31, 32), 10, (0.03, 0.07))
        [alert] = anomaly_alerts(results)
        found = await deps.decisions.lookup([("acme", Scope.tenant, "acme")], now_ms())
        if shadow:
            assert found == [] and alert.shadow and "shadow: would have applied" in alert.message
        else:
            assert [(d.action.value, d.rule_id, d.retry_after_s) for d in found] == [
                ("throttle", "spend-anomaly", 120)
            ]
            assert [d.rule_id for r in results for d in r.decisions] == ["spend-anomaly"]


async def test_a_partition_that_moves_away_and_back_does_not_roll_the_model_back(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    rules = "anomaly: {scopes: [tenant], warmup: 20, persist_every: 1, outliers: null}\n"
    deps = pipeline_deps_factory(rules)
    first, second = with_models(deps, redis), with_models(deps, redis)
    assert first.anomaly is not None and second.anomaly is not None
    key = ("acme", Scope.tenant, "acme")
    start = now_ms() - 90 * MINUTE_MS
    start -= start % MINUTE_MS
    await play(first, start, range(20), 10, (0.03, 0.07))  # the first worker owns acme
    learned_first = first.anomaly.state_of(key)
    assert learned_first is not None and learned_first.intervals == 19  # minutes 0-18 closed
    first.anomaly.partitions_moved()  # what the worker's rebalance listener says
    await play(second, start, range(20, 40), 10, (0.03, 0.07))  # the partition moved
    by_second = second.anomaly.state_of(key)
    # Loaded from Redis, then learned on: minutes 20-38 (minute 19 was split by the move, and
    # each worker's part of it is dropped, as after a restart).
    assert by_second is not None and by_second.intervals == 19 + 19
    await play(first, start, range(40, 42), 10, (0.03, 0.07))  # and moved back
    back = first.anomaly.state_of(key)
    assert back is not None and back is not learned_first, "the stale copy must be replaced"
    assert back.intervals == 38 + 1 and back.last_start_ms == start + 40 * MINUTE_MS


async def test_a_dearer_model_at_night_pages_once_its_run_cost_min_spend_across_a_move(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    # Half a cent a minute, then every call sixteen times dearer: $0.08 a minute, far under
    # min_spend_usd, but $0.075 above expected each minute; the run's total is kept in the
    # state in Redis, so a partition that moves mid-run does not start it again.
    rules = (
        "anomaly: {scopes: [tenant], warmup: 20, min_spend_usd: 0.5, persist_every: 1,"
        " outliers: null}\n"
    )
    deps = pipeline_deps_factory(rules)
    first, second = with_models(deps, redis), with_models(deps, redis)
    start = now_ms() - 90 * MINUTE_MS
    start -= start % MINUTE_MS
    calm = await play(first, start, range(30), 10, (0.0004, 0.0006))
    dear = await play(first, start, range(30, 34), 10, (0.0075, 0.0085), model="gpt-4-32k")
    assert anomaly_alerts(calm + dear) == []  # minutes 30-32 closed: $0.23 above expected
    # The partition moves: minute 33 is split between the workers and never scored.
    moved = await play(second, start, range(34, 40), 10, (0.0075, 0.0085), model="gpt-4-32k")
    [alert] = anomaly_alerts(moved)
    assert alert.scope is Scope.tenant and alert.observed < 0.1
    # Minutes 30, 31, 32, 34, 35, 36 and 37: the seventh reaches $0.5.
    assert alert.event_time == rfc3339(start + 38 * MINUTE_MS)
    assert "7 intervals of 1m in a row above normal" in alert.message
    assert "a call, usually $0.0005 (16" in alert.message, alert.message


async def test_a_gap_is_checked_against_redis_only_after_partitions_moved(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    rules = "anomaly: {scopes: [tenant], warmup: 20, persist_every: 1, outliers: null}\n"
    deps = with_models(pipeline_deps_factory(rules), redis)
    watch = deps.anomaly
    assert watch is not None
    start = now_ms() - 90 * MINUTE_MS
    start -= start % MINUTE_MS
    await play(deps, start, range(3), 10, (0.03, 0.07))
    first_reads = watch.stats.index_reads
    assert first_reads == 1  # the first sight of acme
    # Minutes 10-12 after a gap: this worker kept its partitions, so its state is current.
    await play(deps, start, range(10, 13), 10, (0.03, 0.07))
    assert watch.stats.index_reads == first_reads
    watch.partitions_moved()
    await play(deps, start, range(20, 23), 10, (0.03, 0.07))
    assert watch.stats.index_reads == first_reads + 1
    state = watch.state_of(("acme", Scope.tenant, "acme"))
    assert state is not None and state.last_start_ms == start + 21 * MINUTE_MS


class MovedMidBatch(AnomalyWatch):
    """Partitions are taken away while a batch waits on Redis for its states (a rebalance
    landing in the middle of a running batch)."""

    move_next = False

    async def _ready_states(self, *args: Any, **kwargs: Any) -> None:
        await super()._ready_states(*args, **kwargs)
        if self.move_next:
            self.move_next = False
            self.partitions_moved()


async def test_a_batch_running_when_partitions_move_marks_no_state_current(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    rules = "anomaly: {scopes: [tenant], warmup: 20, persist_every: 1, outliers: null}\n"
    base = pipeline_deps_factory(rules)
    watch = MovedMidBatch(redis, base.decisions)
    deps = dataclasses.replace(base, anomaly=watch)
    start = now_ms() - 90 * MINUTE_MS
    start -= start % MINUTE_MS
    await play(deps, start, range(3), 10, (0.03, 0.07))
    watch.move_next = True  # the batch closing minute 2 is caught by the move
    await play(deps, start, range(3, 4), 10, (0.03, 0.07))
    reads = watch.stats.index_reads
    # After a gap, the state judged by the caught batch is checked against Redis again.
    await play(deps, start, range(10, 12), 10, (0.03, 0.07))
    assert watch.stats.index_reads == reads + 1


class FirstApplyWaits(WindowStore):
    """The real window store, whose first apply call waits a little first: a batch started
    before another then finishes after it, as happens with batches in flight in the worker."""

    first = True

    async def apply_batch(self, *args: Any, **kwargs: Any) -> Any:
        if self.first:
            self.first = False
            await asyncio.sleep(0.5)
        return await super().apply_batch(*args, **kwargs)


@pytest.mark.parametrize("in_turn", [True, False])
async def test_batches_in_flight_reach_the_models_in_the_order_they_started(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis, in_turn: bool
) -> None:
    """Batch A (minute 0) starts first but its write is slow; batch B (minute 2, same
    partition) is done first. With turns, A's events still reach the models before B's moves
    event time past minute 0; without them (the control), B closes minute 0 first and A's
    events arrive too late for the models."""
    base = with_models(pipeline_deps_factory(RULES.format(warmup=5, min_spend=1)), redis)
    windows = FirstApplyWaits(redis, 3600, base.settings.allowed_lateness_s)
    deps = dataclasses.replace(base, windows=windows)
    start = now_ms() - 10 * MINUTE_MS
    start -= start % MINUTE_MS
    batch_a = minute_of_calls(start, 0, 20, (0.03, 0.07), seed=1)
    batch_b = minute_of_calls(start, 2, 20, (0.03, 0.07), seed=2)
    turns = Turns()
    turn_a, turn_b = (turns.next(), turns.next()) if in_turn else (None, None)
    a = asyncio.create_task(handle_batch(batch_a, deps, now_ms(), turn=turn_a))
    await asyncio.sleep(0.05)  # A is in its slow write
    b = asyncio.create_task(handle_batch(batch_b, deps, now_ms(), turn=turn_b))
    result_a, result_b = await asyncio.gather(a, b)
    assert deps.anomaly is not None
    assert result_b.late_for_models == 0
    if in_turn:
        assert deps.anomaly.late_events == result_a.late_for_models == 0
        assert deps.anomaly.stats.intervals_scored >= 1  # minute 0 closed with A's events in it
    else:
        assert deps.anomaly.late_events == result_a.late_for_models == len(batch_a)
