"""One batch through every stage with real Redis and Kafka: unpriced models, late events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from detector import keys
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.pipeline import Deps, handle_batch
from detector.pricing import PriceTable
from detector.rules.holder import RulesHolder
from detector.schemas import Scope
from detector.sinks.kafka import KafkaSink
from detector.windows.counters import WindowStore

from .conftest import event_bytes, read_topic


@pytest.fixture
async def deps(kafka_topics: Settings, redis: Redis, tmp_path: Path) -> AsyncIterator[Deps]:
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    settings = kafka_topics.model_copy(update={"allowed_lateness_s": 3600})
    kafka = KafkaSink(settings)
    await kafka.start()
    yield Deps(
        settings=settings,
        rules=RulesHolder(settings.rules),
        prices=PriceTable.load(),
        windows=WindowStore(redis, settings.dedup_horizon_s, settings.allowed_lateness_s),
        decisions=DecisionStore(redis),
        kafka=kafka,
    )
    await kafka.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_unpriced_model_alerts_once_per_model_per_day(deps: Deps) -> None:
    at = now_ms()

    def call(i: int, model: str) -> tuple[bytes | None, bytes]:
        body = event_bytes(event_id=f"e{i}", ts=at, tenant_id="acme", model=model, input_tokens=50)
        return (b"acme", body)

    first = await handle_batch([call(1, "house-llm-7b"), call(2, "house-llm-7b")], deps, at)
    second = await handle_batch([call(3, "house-llm-7b"), call(4, "gpt-4o")], deps, at)
    assert [a.kind.value for a in first.alerts] == ["unpriced_model"]
    assert second.alerts == []
    assert first.alerts[0].entity_id == "house-llm-7b" and first.alerts[0].observed == 2

    published = await read_topic(deps.settings, keys.TOPIC_ALERTS, 1)
    assert [orjson.loads(m.value)["kind"] for m in published] == ["unpriced_model"]
    [model] = await deps.windows.read_windows([("acme", Scope.model, "house-llm-7b", "today")], at)
    assert model["requests"] == 3 and model["unpriced_requests"] == 3
    assert model["input_tokens"] == 150 and model["cost_usd"] == 0


async def test_late_event_counts_in_long_windows_only_and_is_reported(deps: Deps) -> None:
    at = now_ms()
    late = event_bytes(
        event_id="old", ts=at - 90 * 60_000, tenant_id="acme", model="gpt-4o", cost_usd=3.0
    )
    fresh = event_bytes(event_id="new", ts=at, tenant_id="acme", model="gpt-4o", cost_usd=1.0)
    result = await handle_batch([(b"acme", late), (b"acme", fresh)], deps, at)
    assert result.applied == 2 and result.late == 1
    short, day = await deps.windows.read_windows(
        [("acme", Scope.tenant, "acme", "1h"), ("acme", Scope.tenant, "acme", "1d")], at
    )
    assert short["cost_usd"] == 1.0
    assert day["cost_usd"] == 4.0


async def test_settings_factory_is_isolated(
    settings_factory: Callable[..., Settings], kafka_topics: Settings
) -> None:
    other = settings_factory(topic_prefix="elsewhere.")
    assert other.topic(keys.TOPIC_EVENTS) != kafka_topics.topic(keys.TOPIC_EVENTS)
