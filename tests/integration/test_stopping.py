"""Stopping in the middle of Redis work: no connection kept from the pool, no batch outliving
the worker."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings

from redis.asyncio import Redis

from detector.pricing import PriceTable, price_event
from detector.schemas import UsageEvent
from detector.windows.counters import PricedEvent, WindowStore
from detector.worker import _stop_batches


def _events(n: int, round_: int, now_ms: int) -> list[PricedEvent]:
    table = PriceTable.load()
    out = []
    for i in range(n):
        event = UsageEvent.model_validate(
            {
                "event_id": f"r{round_}-{i}",
                "tenant_id": f"t{i % 7}",
                "user_id": f"u{i % 31}",
                "model": "gpt-4o",
                "ts_ms": now_ms,
                "input_tokens": 100,
                "output_tokens": 10,
            }
        )
        out.append(PricedEvent(event, price_event(event, table)))
    return out


async def test_cancelled_batches_give_their_connections_back(redis: Redis) -> None:
    """Batches cancelled at many points of their Redis work, the script check before the
    pipeline's own try block included: afterwards no connection is held outside the pool."""
    pool_class = type(redis.connection_pool)
    client = Redis(connection_pool=pool_class(**redis.connection_pool.connection_kwargs))
    store = WindowStore(client, dedup_horizon_s=3600)
    now_ms = time.time_ns() // 1_000_000
    cancelled = 0
    try:
        for round_ in range(80):
            # A flushed script cache makes the next pipeline check and load its scripts.
            if round_ % 3 == 0:
                await redis.script_flush()
            task = asyncio.create_task(store.apply_batch(_events(40, round_, now_ms), now_ms))
            for _ in range(round_ % 40):  # cut off after 0 to 39 turns of the event loop
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                cancelled += 1
        pool = client.connection_pool
        assert cancelled >= 20  # many rounds were really cut off mid-way
        held = pool._in_use_connections
        assert len(held) == 0, held
    finally:
        await client.aclose()
        # A cancel that lands while redis-py opens a connection can lose the new socket before
        # the connection object holds it (inside asyncio's open_connection, not our code; the
        # worker cancels only when it stops). Such sockets are collected here, inside this
        # test, not in whichever later test the garbage collector happens to run in (where
        # their ResourceWarning failed a test in 1 of 2 full runs under load).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


async def test_a_batch_that_swallows_a_cancel_is_stopped_before_stop_returns() -> None:
    """Python 3.11's wait_for can lose a cancel (CPython gh-86296); the worker cancels again
    until every batch has stopped, so none runs on after the clients are closed."""
    steps: list[str] = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            steps.append("first cancel swallowed")
        await asyncio.sleep(10)
        steps.append("ran on")  # never reached: the second cancel stops it

    async def quick() -> None:
        await asyncio.sleep(10)

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(quick())]
    await asyncio.sleep(0)
    await _stop_batches(tasks)
    assert all(task.done() for task in tasks)
    assert steps == ["first cancel swallowed"]
