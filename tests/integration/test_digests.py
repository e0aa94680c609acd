"""Daily and weekly digests: the reports' numbers, sent once per period by any number of workers."""

from __future__ import annotations

import asyncio
import re
import signal
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
from detector.schemas import Alert, Scope
from detector.slack_stub import SlackStub
from detector.windows.counters import WindowStore

from .conftest import WorkerStarter, produce, settings_env
from .report_events import Expected, calendar, generate, raw, select
from .test_cli import run


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
    try:
        await sends_each_once(redis, senders, sink, today, now_ms)
    finally:
        for s in senders:
            await s.close()
    by_kind = {a.rule_id: a for a in sink.alerts}
    daily, weekly = by_kind["daily-digest"], by_kind["weekly-digest"]
    check_numbers(daily.message, events, {today - timedelta(days=1)})
    monday = today - timedelta(days=today.weekday())
    check_numbers(weekly.message, events, calendar("week", monday - timedelta(days=7), today))
    assert daily.kind.value == "digest" and daily.window == "day"


async def sends_each_once(
    redis: Redis, senders: list[DigestSender], sink: Recorder, today: date, now_ms: int
) -> None:
    claims = {
        "daily": keys.digest_claim_key("daily", day_ms(today - timedelta(days=1))),
        "weekly": keys.digest_claim_key(
            "weekly", day_ms(today - timedelta(days=today.weekday() + 7))
        ),
    }
    # The first send fails: its claim stays a lease, and nobody sends it until that expires.
    first = await asyncio.gather(*(s.tick(now_ms) for s in senders))
    [sent] = [k for kinds in first for k in kinds]
    [failed] = set(claims) - {sent}
    assert await claim_state(redis, claims[sent]) == "sent"
    assert await claim_state(redis, claims[failed]) == "sending"
    assert 0 < await redis.pttl(claims[failed]) <= 300_000
    for _ in range(3):
        assert [await s.tick(now_ms) for s in senders] == [[], [], []]
    await redis.pexpire(claims[failed], 1)  # as if the lease ran out
    await asyncio.sleep(0.05)
    again = await asyncio.gather(*(s.tick(now_ms) for s in senders))
    assert [k for kinds in again for k in kinds] == [failed]
    assert await claim_state(redis, claims[failed]) == "sent"
    assert sorted(a.rule_id for a in sink.alerts) == ["daily-digest", "weekly-digest"]


@pytest.mark.timeout(200)
async def test_events_through_kafka_and_a_worker_then_two_workers_send_each_digest_once(
    redis: Redis, kafka_topics: Settings, slack_stub: SlackStub, worker_factory: WorkerStarter
) -> None:
    """The whole chain: events on Kafka, counted by a worker, digests from two others."""
    now_ms = time.time_ns() // 1_000_000
    events = generate(now_ms, 900, days_back=16, seed=4)
    keyed = raw(events)
    await produce(kafka_topics, [v for _, v in keyed], [k for k, _ in keyed])
    kafka_topics.rules.write_text("rules: []\n")
    counter, log_path = await worker_factory(kafka_topics, "counter")
    store = WindowStore(redis, 3600)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        [m] = await store.read_windows(
            [(keys.GLOBAL_TENANT, Scope.global_, "all", "30d")], time.time_ns() // 1_000_000
        )
        if m["requests"] >= len(events):
            break
        assert counter.returncode is None, log_path.read_text()[-2000:]
        await asyncio.sleep(0.5)
    assert m["requests"] == len(events)
    counter.send_signal(signal.SIGTERM)
    await counter.wait()

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
    today = datetime.fromtimestamp(now_ms / 1000, tz=UTC).date()
    check_numbers(daily, events, {today - timedelta(days=1)})
    monday = today - timedelta(days=today.weekday())
    check_numbers(weekly, events, calendar("week", monday - timedelta(days=7), today))


async def test_digest_command_prints_the_due_digest(
    settings_factory: Callable[..., Settings], history: tuple[list[Expected], date, int]
) -> None:
    events, today, _ = history
    env = settings_env(settings_factory())
    done = run(["digest", "daily"], env)
    assert done.returncode == 0, done.stderr
    yesterday = today - timedelta(days=1)
    assert done.stdout.startswith(f"*Daily spend digest, day {yesterday}*")
    check_numbers(done.stdout, events, {yesterday})
    done = run(["digest", "monthly"], env)
    assert (done.returncode, done.stderr.strip()) == (
        1, "error: KIND must be daily or weekly, got 'monthly'"
    )  # fmt: skip
