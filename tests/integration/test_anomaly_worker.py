"""Anomaly models in `detector worker` processes over real Kafka and Redis: a worker learns a
tenant's normal minutes, is killed, and the worker that takes over still knows that normal, so
the next spike reaches Slack (a local stub) with its explanation; and `detector rules backtest`
prints the same kind of anomaly alert as JSON."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from redis.asyncio import Redis

from detector import keys
from detector.config import Settings
from detector.slack_stub import SlackStub
from detector.timefmt import rfc3339

from .conftest import WorkerStarter, produce, settings_env, wait_for

MINUTE_MS = 60_000
RULES = """
anomaly:
  scopes: [tenant, user]
  warmup: 15
  persist_every: 1
  min_spend_usd: 1
  outliers: null
"""


def minute(
    start_ms: int, m: int, calls: int, cost: tuple[float, float], user: str = ""
) -> list[bytes]:
    rng = random.Random(m * 7919 + calls)
    return [
        orjson.dumps({
            "event_id": f"m{m}-{i}-{user}", "ts": start_ms + m * MINUTE_MS + i * 100,
            "tenant_id": "acme", "user_id": user or f"u{rng.randrange(4)}", "feature": "chat",
            "model": "gpt-4o", "cost_usd": round(rng.uniform(*cost), 6),
        })
        for i in range(calls)
    ]  # fmt: skip


async def test_model_survives_a_worker_kill_and_the_next_spike_reaches_slack(
    settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    slack_stub: SlackStub,
    redis: Redis,
    worker_factory: WorkerStarter,
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    settings = settings_factory()
    slack = {"DETECTOR_SLACK_WEBHOOK_URL": slack_stub.webhook_url}
    first, first_log = await worker_factory(settings, "first", **slack)
    start = time.time_ns() // 1_000_000 - 60 * MINUTE_MS
    start -= start % MINUTE_MS
    history = [line for m in range(25) for line in minute(start, m, 10, (0.03, 0.07))]
    await produce(settings, history, [b"acme"] * len(history))

    index = keys.anomaly_index_key("acme")

    async def learned_22_minutes() -> bool:
        mark = await redis.hget(index, "tenant:acme")
        return mark is not None and int(mark) >= start + 22 * MINUTE_MS

    await wait_for(learned_22_minutes, 60, f"the first worker to learn (log: {first_log})")
    assert slack_stub.messages == []
    first.kill()  # no clean shutdown: whatever it kept only in memory is gone
    await first.wait()

    second, second_log = await worker_factory(settings, "second", **slack)
    spike = minute(start, 25, 200, (0.08, 0.12), user="u3") + minute(start, 25, 10, (0.03, 0.07))
    calm = [line for m in (26, 27) for line in minute(start, m, 10, (0.03, 0.07))]
    await produce(settings, spike + calm, [b"acme"] * (len(spike) + len(calm)))
    await wait_for(lambda: slack_stub.messages, 90, f"the anomaly alert (log: {second_log})")

    [message] = slack_stub.messages
    text = str(message["text"])
    assert "anomaly spend-anomaly" in text and "tenant acme spent $" in text
    assert "expected $" in text and "anomaly score" in text and "user u3" in text
    assert second.returncode is None


def test_backtest_prints_anomaly_alerts_as_json(
    settings_factory: Callable[..., Settings], tmp_path: Path, redis: Redis
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    start = 1_764_770_000_000 - 1_764_770_000_000 % MINUTE_MS
    lines = [line for m in range(40) for line in minute(start, m, 10, (0.03, 0.07))]
    lines += minute(start, 40, 200, (0.08, 0.12), user="u1")  # the last minute: closed at the end
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    done = subprocess.run(  # noqa: S603  (our own command)
        [sys.executable, "-m", "detector", "rules", "backtest", str(rules),
         "--events", str(events), "--format", "json"],
        capture_output=True, text=True, env=settings_env(settings_factory()), timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    alerts = orjson.loads(done.stdout)["alerts"]
    [alert] = [a for a in alerts if a["kind"] == "anomaly"]
    assert (alert["rule_id"], alert["scope"], alert["entity_id"]) == (
        "spend-anomaly", "tenant", "acme"
    )  # fmt: skip
    assert alert["event_time"] == rfc3339(start + 41 * MINUTE_MS)  # minute 40's end, event time
    low, high = alert["band"]
    assert alert["observed"] > high > alert["expected"] > low
    assert alert["contributors"][0]["id"] == "u1" and alert["score"] > 0.5
