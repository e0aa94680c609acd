"""A batch that hits a bug is retried event by event: the bad event is dead-lettered with the
error as its reason, a store error on the way is held and retried, and every other event counts
once (real Kafka and Redis; the faults are injected into the window store)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from detector import keys
from detector.pipeline import Deps
from detector.rules.holder import RulesHolder
from detector.schemas import Scope
from detector.windows.counters import ApplyResult, PricedEvent, WindowStore
from detector.worker import PROCESSING_FAILED, EventsConsumer

from .conftest import event_bytes, produce, read_topic


class FaultyWindows(WindowStore):
    """The real store, except that any batch holding event `poison` raises a bug, and the
    first call for event `blip` alone loses its connection."""

    blipped = False

    async def apply_batch(
        self, batch: Sequence[PricedEvent], now_ms: int, *args: Any, **kwargs: Any
    ) -> ApplyResult:
        ids = {p.event.event_id for p in batch}
        if "poison" in ids:
            raise ValueError("a bug met by this event")
        if ids == {"blip"} and not self.blipped:
            self.blipped = True
            raise RedisConnectionError("connection lost")
        return await super().apply_batch(batch, now_ms, *args, **kwargs)


async def test_a_bug_dead_letters_one_event_and_the_rest_count_once(
    pipeline_deps_factory: Callable[[str], Deps], redis: Redis
) -> None:
    base = pipeline_deps_factory("rules: []\n")
    windows = FaultyWindows(redis, 3600, base.settings.allowed_lateness_s)
    deps = dataclasses.replace(base, windows=windows)
    settings = deps.settings
    now_ms = time.time_ns() // 1_000_000
    values = [
        event_bytes(
            event_id=eid,
            tenant_id="acme",
            user_id="u1",
            model="gpt-4o",
            ts=now_ms,
            input_tokens=10,
            output_tokens=5,
            cost_usd=cost,
        )  # fmt: skip
        for eid, cost in (("ok", 0.25), ("poison", 5.0), ("blip", 0.5))
    ]
    await produce(settings, values, [b"acme"] * 3)
    records = await read_topic(settings, keys.TOPIC_EVENTS, 3)
    assert len(records) == 3

    worker = EventsConsumer(settings, RulesHolder(settings.rules), deps.prices)
    await worker._process(records, deps)

    [tenant] = await windows.read_windows([("acme", Scope.tenant, "acme", "1h")], now_ms)
    assert tenant["requests"] == 2 and tenant["cost_usd"] == 0.75  # ok and blip, once each
    assert windows.blipped
    [letter] = await read_topic(settings, keys.TOPIC_DEADLETTER, 1)
    body = orjson.loads(letter.value)
    assert body["reason"] == PROCESSING_FAILED
    assert "ValueError: a bug met by this event" in body["detail"]
    assert orjson.loads(body["original"])["event_id"] == "poison"
    assert ("reason", PROCESSING_FAILED.encode()) in list(letter.headers)
