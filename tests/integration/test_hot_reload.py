"""A running worker takes up a changed rules.yaml (on change or SIGHUP) and refuses a bad one."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.schemas import Scope

from .conftest import WorkerStarter, event_bytes, produce, wait_for

RULE = """
rules:
  - id: tenant-burn
    scope: tenant
    metric: cost_usd
    window: 1h
    threshold: {threshold}
    action: block
    for: 10m
"""


async def test_rules_reload_on_change_and_on_sighup(
    settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    redis: Redis,
    worker_factory: WorkerStarter,
    tmp_path: Path,
) -> None:
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(RULE.format(threshold=100))
    settings = settings_factory()
    worker, log_path = await worker_factory(settings)
    store = DecisionStore(redis)
    now_ms = time.time_ns() // 1_000_000

    async def blocked(tenant: str) -> bool:
        found = await store.lookup([(tenant, Scope.tenant, tenant)], time.time_ns() // 1_000_000)
        return bool(found)

    def spend(tenant: str, n: int) -> bytes:
        return event_bytes(
            event_id=f"{tenant}-{n}", ts=now_ms, tenant_id=tenant, model="gpt-4o", cost_usd=2.0
        )

    async def log_says(text: str) -> bool:
        return text in log_path.read_text(errors="replace")

    # $2 against a $100 threshold: nothing.
    await produce(settings, [spend("acme", 1)], [b"acme"])
    await wait_for(lambda: log_says("consuming"), 60, "the worker to start")
    await asyncio.sleep(1.5)
    assert not await blocked("acme")

    # A bad edit is refused and the old rules stay.
    rules_path.write_text(RULE.format(threshold=-5))
    await wait_for(lambda: log_says("rules reload refused"), 15, "the bad file to be refused")
    await produce(settings, [spend("acme", 2)], [b"acme"])
    await asyncio.sleep(1.5)
    assert not await blocked("acme")

    # A good edit takes effect: $6 is now over the $5 threshold.
    rules_path.write_text(RULE.format(threshold=5))
    await wait_for(lambda: log_says("rules reloaded"), 15, "the new rules")
    await produce(settings, [spend("acme", 3)], [b"acme"])
    await wait_for(lambda: blocked("acme"), 20, "acme to be blocked under the new rules")

    # SIGHUP reloads at once, even when the modification time did not move.
    stat = rules_path.stat()
    rules_path.write_text(RULE.format(threshold=1))
    os.utime(rules_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = log_path.read_text(errors="replace").count("rules reloaded")
    worker.send_signal(signal.SIGHUP)

    async def reloaded_again() -> bool:
        return log_path.read_text(errors="replace").count("rules reloaded") > before

    await wait_for(reloaded_again, 10, "SIGHUP to reload the rules")
    await produce(settings, [spend("globex", 1)], [b"globex"])
    await wait_for(lambda: blocked("globex"), 20, "globex ($2 > $1) to be blocked")
    assert worker.returncode is None
    worker.send_signal(signal.SIGTERM)
    await asyncio.wait_for(worker.wait(), timeout=30)
