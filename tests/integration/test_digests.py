"""Daily and weekly digests: the reports' numbers, sent once per period by any number of workers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from redis.asyncio import Redis

from detector import keys
from detector.config import Settings
from detector.errors import SinkError
from detector.pipeline import Deps, handle_batch
from detector.reports.digest import DigestSender
from detector.reports.periods import day_ms
from detector.schemas import Alert
from detector.slack_stub import SlackStub

from .conftest import WorkerStarter
from .report_events import Expected, calendar, generate, raw, select


class Recorder:
    """A sink that keeps what it is given, and can fail the first few sends."""

    def __init__(self, failures: int = 0) -> None:
        self.alerts: list[Alert] = []
        self.failures = failures

    async def send_alert(self, alert: Alert) -> None:
        await asyncio.sleep(0.01)  # let a concurrent check run meanwhile
        if self.failures:
            self.failures -= 1
            raise SinkError("slack webhook unreachable: test")
        self.alerts.append(alert)

    async def close(self) -> None:
        return None


@pytest.fixture
async def history(
    pipeline_deps_factory: Callable[[str], Deps],
) -> tuple[list[Expected], date, int]:
    now_ms = time.time_ns() // 1_000_000
    events = generate(now_ms, 900, days_back=16, seed=3)
    messages = raw(events)
    await handle_batch(messages, pipeline_deps_factory("rules: []\n"), now_ms)
    return events, datetime.fromtimestamp(now_ms / 1000, tz=UTC).date(), now_ms


async def claim_state(redis: Redis, key: str) -> str:
    value = await redis.get(key)
    assert isinstance(value, bytes), value
    return value.decode().partition(":")[0]


def money(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found is not None, (pattern, text)
    return float(found.group(1).replace(",", ""))


def check_numbers(text: str, events: list[Expected], period: set[date]) -> None:
    picked = select(events, period, None)
    assert abs(money(r"Total \$([\d,.]+)", text) - sum(e.cost for e in picked)) < 0.005
    assert f"{len(picked):,} requests" in text
    users = {(e.get("tenant_id"), e.get("user_id")) for e in picked if e.get("user_id")}
    assert f"{len(users):,} active users" in text
    for tenant in ("acme", "globex", "initech"):
        cost = sum(e.cost for e in picked if e.get("tenant_id") == tenant)
        assert abs(money(rf"{tenant} \$([\d,.]+) \(", text) - cost) < 0.005
    last_week = {d - timedelta(days=7) for d in period}
    before = sum(e.cost for e in select(events, last_week, None))
    change = money(r"Total \$[\d,.]+, [+-]\$([\d,.]+)", text)
    assert abs(change - abs(sum(e.cost for e in picked) - before)) < 0.005


async def test_each_digest_once_however_many_checks(
    redis: Redis, settings_factory: Callable[..., Settings],
    history: tuple[list[Expected], date, int],
) -> None:  # fmt: skip
    events, today, now_ms = history
    settings = settings_factory(digest_delay_s=0, digests="daily,weekly")
    sink = Recorder(failures=1)
    senders = [DigestSender(settings, sink) for _ in range(3)]
    # The first send fails: the claim stays a lease, and nobody sends until it expires.
    first = await asyncio.gather(*(s.tick(now_ms) for s in senders))
    assert sorted(k for sent in first for k in sent) == ["weekly"]
    yesterday = today - timedelta(days=1)
    claim = keys.digest_claim_key("daily", day_ms(yesterday))
    assert await claim_state(redis, claim) == "sending"
    assert 0 < await redis.pttl(claim) <= 300_000
    for _ in range(3):
        assert [await s.tick(now_ms) for s in senders] == [[], [], []]
    await redis.pexpire(claim, 1)  # as if the lease ran out
    await asyncio.sleep(0.05)
    again = await asyncio.gather(*(s.tick(now_ms) for s in senders))
    assert sorted(k for sent in again for k in sent) == ["daily"]
    assert await claim_state(redis, claim) == "sent"
    assert [a.rule_id for a in sink.alerts] == ["weekly-digest", "daily-digest"]
    weekly, daily = sink.alerts
    check_numbers(daily.message, events, {yesterday})
    monday = today - timedelta(days=today.weekday())
    check_numbers(weekly.message, events, calendar("week", monday - timedelta(days=7), today))
    assert daily.kind.value == "digest" and daily.window == "day"
    for s in senders:
        await s.close()


@pytest.mark.timeout(150)
async def test_two_workers_send_each_digest_once_to_slack(
    kafka_topics: Settings, slack_stub: SlackStub, worker_factory: WorkerStarter,
    history: tuple[list[Expected], date, int],
) -> None:  # fmt: skip
    events, today, _ = history
    settings = kafka_topics.model_copy(
        update={"digest_delay_s": 0, "digest_check_s": 1.0, "digests": "daily,weekly"}
    )
    env = {"DETECTOR_SLACK_WEBHOOK_URL": slack_stub.webhook_url}
    for name in ("w1", "w2"):
        await worker_factory(settings, name, **env)
    deadline = time.monotonic() + 90
    while len(slack_stub.messages) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await asyncio.sleep(5)  # both workers keep checking every second meanwhile
    texts = sorted(str(m["text"]) for m in slack_stub.messages)
    assert len(texts) == 2, texts
    daily, weekly = texts
    assert "Daily spend digest" in daily and "Weekly spend digest" in weekly
    check_numbers(daily, events, {today - timedelta(days=1)})
    monday = today - timedelta(days=today.weekday())
    check_numbers(weekly, events, calendar("week", monday - timedelta(days=7), today))
