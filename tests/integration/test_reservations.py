"""Budget reservations over real Redis: hundreds of concurrent holds against a nearly spent
budget never grant more than the budget; a counted cost event releases its hold; an unsettled
hold expires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from redis.asyncio import Redis

from detector.config import Settings
from detector.pipeline import Deps, handle_batch

from .conftest import event_bytes, serve_api

RULES = """
budgets:
  - id: tenant-daily
    scope: tenant
    period: day
    amount_usd: 10
    alert_at: [1.0]
    action: block
"""


async def spend(deps: Deps, tenant: str, event_id: str, usd: float) -> None:
    now_ms = time.time_ns() // 1_000_000
    body = event_bytes(event_id=event_id, ts=now_ms, tenant_id=tenant, model="gpt-4o",
                       cost_usd=usd)  # fmt: skip
    await handle_batch([(tenant.encode(), body)], deps, now_ms)


async def reserve(
    http: aiohttp.ClientSession, base: str, tenant: str, request_id: str, usd: float,
    hold_s: int = 120,
) -> dict[str, object]:  # fmt: skip
    ask = {"request_id": request_id, "tenant_id": tenant, "estimated_cost_usd": usd,
           "hold_s": hold_s}  # fmt: skip
    async with http.post(f"{base}/v1/reserve", json=ask) as r:
        assert r.status == 200, await r.text()
        body: dict[str, object] = await r.json()
        return body


async def test_concurrent_reservations_never_exceed_the_budget(
    pipeline_deps_factory: Callable[[str], Deps],
    settings_factory: Callable[..., Settings],
    redis: Redis,
) -> None:
    deps = pipeline_deps_factory(RULES)
    await spend(deps, "acme", "before", 9.50)  # $0.50 left
    async with serve_api(settings_factory(), None) as base, aiohttp.ClientSession() as http:
        answers = await asyncio.gather(
            *(reserve(http, base, "acme", f"req-{i}", 0.01) for i in range(300))
        )
        granted = [a for a in answers if a["granted"]]
        assert len(granted) == 50  # 50 x $0.01 = the $0.50 left, not a cent more
        assert min(float(str(a["remaining_usd"])) for a in granted) == 0.0
        assert all(a["remaining_usd"] == 0.0 for a in answers if not a["granted"])

        # req-0's call happens and costs less than held: its hold is released, the rest stays.
        winner = str(granted[0]["request_id"])
        await spend(deps, "acme", winner, 0.004)
        again = await reserve(http, base, "acme", "late-1", 0.006)
        assert again["granted"] is True and again["remaining_usd"] == 0.0
        assert (await reserve(http, base, "acme", "late-2", 0.001))["granted"] is False


async def test_unsettled_hold_expires(
    pipeline_deps_factory: Callable[[str], Deps],
    settings_factory: Callable[..., Settings],
    redis: Redis,
) -> None:
    deps = pipeline_deps_factory(RULES)
    await spend(deps, "globex", "before", 9.99)
    async with serve_api(settings_factory(), None) as base, aiohttp.ClientSession() as http:
        assert (await reserve(http, base, "globex", "a", 0.01, hold_s=1))["granted"] is True
        assert (await reserve(http, base, "globex", "b", 0.01))["granted"] is False
        await asyncio.sleep(1.1)
        assert (await reserve(http, base, "globex", "c", 0.01))["granted"] is True


async def test_reserve_validates_and_prices_token_estimates(
    pipeline_deps_factory: Callable[[str], Deps],
    settings_factory: Callable[..., Settings],
    redis: Redis,
) -> None:
    pipeline_deps_factory(RULES)  # writes the rules file the API reads
    async with serve_api(settings_factory(), None) as base, aiohttp.ClientSession() as http:
        ask = {"request_id": "t1", "tenant_id": "acme", "model": "gpt-4o",
               "input_tokens": 1_000_000, "output_tokens": 0}  # fmt: skip
        async with http.post(f"{base}/v1/reserve", json=ask) as r:
            body = await r.json()
        assert body["granted"] is True and body["held_usd"] == 2.5  # $2.50 per 1M input
        async with http.post(
            f"{base}/v1/reserve", json={"request_id": "x", "tenant_id": "acme"}
        ) as r:
            assert r.status == 422
            assert (await r.json())["error"] == (
                "body: give estimated_cost_usd, or model with input/output tokens"
            )


async def test_decision_lookup_can_say_what_is_left(
    pipeline_deps_factory: Callable[[str], Deps],
    settings_factory: Callable[..., Settings],
    redis: Redis,
) -> None:
    deps = pipeline_deps_factory(RULES)
    await spend(deps, "initech", "before", 9.5)
    async with serve_api(settings_factory(), None) as base, aiohttp.ClientSession() as http:

        async def left() -> object:
            params = {"tenant_id": "initech", "budgets": "true"}
            async with http.get(f"{base}/v1/decision", params=params) as r:
                return (await r.json())["remaining_usd"]

        assert await left() == 0.5
        assert (await reserve(http, base, "initech", "r1", 0.2))["granted"] is True
        assert await left() == 0.3
        params = {"tenant_id": "initech"}
        async with http.get(f"{base}/v1/decision", params=params) as r:
            assert (await r.json())["remaining_usd"] is None  # only when asked
