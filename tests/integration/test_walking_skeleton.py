"""The product end to end over real Kafka and Redis: a `detector worker` process consumes cost
events, a threshold rule blocks a tenant, Slack (a local stub) gets the alert, the lookup API
answers `block`, and bad events land on the dead-letter topic while the worker keeps going."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from redis.asyncio import Redis

from detector import keys
from detector.api.app import create_app
from detector.config import Settings
from detector.slack_stub import SlackStub

from .conftest import WorkerStarter, event_bytes, free_port, produce, read_topic, wait_for

RULES = """
rules:
  - id: tenant-hourly-burn
    scope: tenant
    metric: cost_usd
    window: 1h
    threshold: 1.0
    action: block
    for: 10m
    severity: critical
"""


async def test_event_to_block_to_slack_to_lookup(
    settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    slack_stub: SlackStub,
    redis: Redis,
    worker_factory: WorkerStarter,
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    settings = settings_factory()
    worker, _ = await worker_factory(settings, DETECTOR_SLACK_WEBHOOK_URL=slack_stub.webhook_url)

    api = create_app(settings, redis)
    runner = web.AppRunner(api)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        now_ms = time.time_ns() // 1_000_000
        good = [
            event_bytes(
                event_id=f"ok-{i}",
                ts=now_ms - 1000 + i,
                tenant_id="acme",
                user_id="u1",
                model="gpt-4o",
                input_tokens=1000,
                output_tokens=500,
                cost_usd=0.3,
            )
            for i in range(3)
        ]
        bad = [
            b"{not json",
            event_bytes(event_id="m1", ts=now_ms, tenant_id="acme", input_tokens=1),  # no model
            event_bytes(
                event_id="n1", ts=now_ms, tenant_id="acme", model="gpt-4o", input_tokens=-5
            ),
        ]
        # Bad events first: the worker must go on to count the good ones after them.
        await produce(settings, bad + good, [b"acme"] * 6)
        # The same event again: 3 x $0.30 = $0.90 stays below the $1 threshold.
        await produce(settings, [good[0]], [b"acme"])

        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:

            async def spend_usd() -> float:
                params = {"scope": "tenant", "tenant_id": "acme", "window": "1h"}
                async with http.get(f"{base}/v1/spend", params=params) as resp:
                    assert resp.status == 200
                    body = await resp.json()
                    return float(body["metrics"]["cost_usd"])

            async def decision() -> dict[str, object]:
                async with http.get(f"{base}/v1/decision", params={"tenant_id": "acme"}) as resp:
                    assert resp.status == 200
                    answer: dict[str, object] = await resp.json()
                    return answer

            async def spend_is(expected: float) -> bool:
                return abs(await spend_usd() - expected) < 1e-9

            await wait_for(lambda: spend_is(0.9), 60, "the worker to count $0.90")
            assert (await decision())["action"] == "allow"

            crossing = event_bytes(
                event_id="ok-3",
                ts=now_ms,
                tenant_id="acme",
                user_id="u2",
                model="gpt-4o",
                cost_usd=0.25,
            )
            await produce(settings, [crossing], [b"acme"])
            await wait_for(
                lambda: _is_blocked(decision), 30, "the lookup API to answer block for acme"
            )
            answer = await decision()
            assert answer["action"] == "block"
            assert (
                isinstance(answer["retry_after_s"], int) and 590 <= answer["retry_after_s"] <= 600
            )
            reasons = answer["reasons"]
            assert isinstance(reasons, list) and reasons[0]["rule_id"] == "tenant-hourly-burn"
            assert await spend_is(1.15)

            async with http.get(f"{base}/v1/decision", params={"tenant_id": "other"}) as resp:
                assert (await resp.json())["action"] == "allow"

        await wait_for(lambda: len(slack_stub.messages) >= 1, 30, "the Slack alert")
        text = str(slack_stub.messages[0]["text"])
        assert "tenant-hourly-burn" in text and "tenant acme" in text and "block until" in text

        dead = await read_topic(settings, keys.TOPIC_DEADLETTER, 3)
        reasons_seen = sorted(orjson.loads(m.value)["reason"] for m in dead)
        assert reasons_seen == ["invalid_json", "missing_field", "negative_tokens"]
        assert {h[0]: h[1] for h in dead[0].headers}["reason"] in {
            b"invalid_json",
            b"missing_field",
            b"negative_tokens",
        }

        decisions = await read_topic(settings, keys.TOPIC_DECISIONS, 1)
        published = orjson.loads(decisions[0].value)
        assert published["tenant_id"] == "acme" and published["action"] == "block"
        assert worker.returncode is None, "the worker must still be running"
    finally:
        await runner.cleanup()
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(worker.wait(), timeout=20)
            except TimeoutError:
                worker.kill()
        assert worker.returncode is not None


async def _is_blocked(decision: Callable[[], object]) -> bool:
    answer = await decision()  # type: ignore[misc]
    return bool(answer["action"] == "block")
