"""`detector rules backtest` runs the worker's own pipeline on event time and agrees with it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from redis.asyncio import Redis

from detector import keys
from detector.backtest import run_backtest
from detector.config import Settings
from detector.schemas import Scope
from detector.simulate import Scenario, generate
from detector.windows.counters import WindowStore

from .conftest import WorkerStarter, produce, read_topic, settings_env

ROOT = Path(__file__).resolve().parents[2]


def scenario_lines(start_ms: int) -> list[bytes]:
    scenario = Scenario(seed=11, duration_s=60, rate_per_s=30, abuse_at_s=15)
    return [orjson.dumps(event) for event in generate(scenario, start_ms)]


async def test_backtest_agrees_with_the_live_worker(
    settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    redis: Redis,
    worker_factory: WorkerStarter,
    tmp_path: Path,
) -> None:
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text((ROOT / "rules.yaml").read_text())
    settings = settings_factory()
    lines = scenario_lines(time.time_ns() // 1_000_000 - 70_000)

    replay = await run_backtest(settings, rules_path, lines)
    expected = sorted((a.rule_id, a.entity_id) for a in replay.collected.alerts)
    assert ("tenant-spend-burst", "tenant-0") in expected
    assert all(entity.startswith("tenant-0") for _, entity in expected)

    await worker_factory(settings)
    await produce(settings, lines, [None] * len(lines))
    store = WindowStore(redis, settings.dedup_horizon_s)
    deadline = time.monotonic() + 60
    while True:
        now_ms = time.time_ns() // 1_000_000
        [total] = await store.read_windows([("_global", Scope.global_, "all", "1d")], now_ms)
        if total["requests"] == len(lines):
            break
        assert time.monotonic() < deadline, f"worker did not count every event; see {tmp_path}"
        await asyncio.sleep(0.2)
    live = await read_topic(settings, keys.TOPIC_ALERTS, len(expected) + 1, timeout_s=5)
    got = sorted(
        (orjson.loads(m.value)["rule_id"], orjson.loads(m.value)["entity_id"]) for m in live
    )
    assert got == expected
    assert replay.applied == len(lines)


def test_backtest_command_prints_json(
    settings_factory: Callable[..., Settings], tmp_path: Path, redis: Redis
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join([*scenario_lines(1_764_770_000_000), b"{bad json"]) + b"\n")
    done = subprocess.run(  # noqa: S603  (our own command)
        [sys.executable, "-m", "detector", "rules", "backtest", str(ROOT / "rules.yaml"),
         "--events", str(events), "--format", "json"],
        capture_output=True,
        text=True,
        env=settings_env(settings_factory()),
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body = orjson.loads(done.stdout)
    assert body["dead_letters"] == {"invalid_json": 1}
    assert body["applied"] == body["events"] - 1
    fired = {(a["rule_id"], a["entity_id"]) for a in body["alerts"]}
    assert ("tenant-spend-burst", "tenant-0") in fired
    burst = next(a for a in body["alerts"] if a["rule_id"] == "tenant-spend-burst")
    assert burst["event_time"].startswith("2025-12-03T")
    assert burst["observed"] > burst["threshold"] == 20
    assert [d["action"] for d in body["decisions"] if d["rule_id"] == "tenant-spend-burst"] == [
        "block"
    ]
