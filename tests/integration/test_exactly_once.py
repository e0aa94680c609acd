"""Every dollar once: a worker killed with SIGKILL mid-stream and restarted counts each event
exactly once, with duplicates, out-of-order and late events mixed into the stream."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from detector.config import Settings
from detector.schemas import Scope
from detector.windows.counters import WindowStore

from .conftest import WorkerStarter, produce, wait_for

N_EVENTS = 20_000
TENANTS = ("acme", "globex", "initech")


def build_stream(
    now_ms: int,
) -> tuple[list[bytes], list[bytes | None], dict[tuple[str, str], int]]:
    """Events with duplicates, shuffled order and late arrivals; the expected micro-dollars."""
    rng = random.Random(1234)
    events = []
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for i in range(N_EVENTS):
        tenant = rng.choice(TENANTS)
        user = f"u{rng.randrange(50)}"
        micros = rng.randrange(1, 50_000)
        # Mostly the last few minutes, some 2-20 hours late (only the 1d+ windows see those).
        age_ms = (
            rng.randrange(0, 240_000) if rng.random() < 0.9 else rng.randrange(2, 20) * 3_600_000
        )
        events.append(
            {
                "event_id": f"ev-{i}",
                "ts": now_ms - age_ms,
                "tenant_id": tenant,
                "user_id": user,
                "model": "gpt-4o",
                "input_tokens": 100,
                "output_tokens": 10,
                "cost_usd": micros / 1_000_000,
            }
        )
        expected[(tenant, "tenant")] += micros
        expected[(tenant, user)] += micros
        expected[("_global", "all")] += micros
    stream = events + rng.sample(events, N_EVENTS // 10)  # 10% published twice
    rng.shuffle(stream)  # out of order
    values = [orjson.dumps(e) for e in stream]
    keys_: list[bytes | None] = [str(e["tenant_id"]).encode() for e in stream]
    return values, keys_, expected


def log_tail(path: Path, chars: int = 12_000) -> str:
    return path.read_text(errors="replace")[-chars:]


async def applied_count(store: WindowStore, now_ms: int) -> int:
    [total] = await store.read_windows([("_global", Scope.global_, "all", "7d")], now_ms)
    return int(total["requests"])


async def run_until(
    store: WindowStore,
    now_ms: int,
    proc: asyncio.subprocess.Process,
    count: int,
    timeout_s: float,
    what: str,
    every_s: float,
) -> None:
    """Wait until `count` events are applied; fail if the worker exits or stalls first."""

    async def reached() -> bool:
        assert proc.returncode is None, f"{what} exited"
        return await applied_count(store, now_ms) >= count

    await wait_for(reached, timeout_s, what, every_s)


async def finish_and_check_once(
    worker_factory: WorkerStarter, settings: Settings, store: WindowStore, now_ms: int, logs: Path
) -> None:
    """A last worker counts the rest; after a pause nothing has been counted twice."""
    final, _ = await worker_factory(settings, "worker-final")
    await run_until(store, now_ms, final, N_EVENTS, 120, f"the final worker (see {logs})", 0.1)
    await asyncio.sleep(2.0)  # anything counted twice would show up now
    final.send_signal(signal.SIGTERM)
    await asyncio.wait_for(final.wait(), timeout=30)
    assert await applied_count(store, now_ms) == N_EVENTS


@pytest.mark.timeout(360)
async def test_sigkill_mid_stream_counts_every_event_once(
    settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    redis: Redis,
    worker_factory: WorkerStarter,
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    # Small batches so that a kill lands between a batch's Redis write and its offset commit.
    settings = settings_factory(batch_max_events=200)
    now_ms = time.time_ns() // 1_000_000
    values, keys_, expected = build_stream(now_ms)
    await produce(settings, values, keys_)
    store = WindowStore(redis, settings.dedup_horizon_s)

    kills = 0
    t0 = time.monotonic()
    for n, kill_at in enumerate((N_EVENTS // 5, N_EVENTS // 2, (N_EVENTS * 4) // 5)):
        proc, _ = await worker_factory(settings, f"worker-{n}")
        await run_until(store, now_ms, proc, kill_at, 90, f"worker {n} (see {tmp_path})", 0.02)
        at = await applied_count(store, now_ms)
        print(f"{time.monotonic() - t0:.1f}s: worker {n} killed with {at} events applied")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        kills += 1
    assert kills == 3

    await finish_and_check_once(worker_factory, settings, store, now_ms, tmp_path)
    reads = []
    for tenant, entity in expected:
        if tenant == "_global":
            reads.append(("_global", Scope.global_, "all", "7d"))
        elif entity == "tenant":
            reads.append((tenant, Scope.tenant, tenant, "7d"))
        else:
            reads.append((tenant, Scope.user, entity, "7d"))
    sums = await store.read_windows(reads, now_ms)
    for (tenant, entity), metrics in zip(expected, sums, strict=True):
        got_micros = round(metrics["cost_usd"] * 1_000_000)
        assert got_micros == expected[(tenant, entity)], (tenant, entity)


@pytest.mark.timeout(360)
async def test_sigterm_mid_stream_stops_cleanly_and_counts_every_event_once(
    settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    redis: Redis,
    worker_factory: WorkerStarter,
    tmp_path: Path,
) -> None:
    """A worker asked to stop while batches are in flight stops them before it closes its
    clients: it exits within seconds, nothing of it runs on (no batch held and retried after
    the stop), and the next worker counts the rest exactly once."""
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    settings = settings_factory(batch_max_events=500)
    now_ms = time.time_ns() // 1_000_000
    values, keys_, expected = build_stream(now_ms)
    await produce(settings, values, keys_)
    store = WindowStore(redis, settings.dedup_horizon_s)

    for n, stop_at in enumerate((N_EVENTS // 4, (N_EVENTS * 3) // 5)):
        proc, log_path = await worker_factory(settings, f"worker-{n}")
        await run_until(store, now_ms, proc, stop_at, 90, f"worker {n} (see {tmp_path})", 0.01)
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=30)
        except TimeoutError:
            proc.send_signal(signal.SIGUSR1)  # faust's worker prints every task's stack
            await asyncio.sleep(3)
            pytest.fail(f"worker {n} still runs 30 s after SIGTERM:\n{log_tail(log_path)}")
        log = log_path.read_text(errors="replace")
        assert "held, retrying" not in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]

    await finish_and_check_once(worker_factory, settings, store, now_ms, tmp_path)
    [total] = await store.read_windows([("_global", Scope.global_, "all", "7d")], now_ms)
    assert round(total["cost_usd"] * 1_000_000) == expected[("_global", "all")]
