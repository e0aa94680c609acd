"""The lookup API's decision cache over real Redis: answers from memory, and every announced
change (new decision, extension, override, lift) is visible at once, far sooner than the
cache's maximum age; a lost subscription falls back to Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from redis.asyncio import Redis

from detector import keys
from detector.config import Settings
from detector.decisions.policy import STRICTNESS, manual_decision
from detector.decisions.store import DecisionStore
from detector.schemas import Action, Decision, Scope
from detector.timefmt import rfc3339

from .conftest import serve_api

LONG_AGE_S = 300.0  # if invalidation failed, a stale answer would stay this long


def now() -> int:
    return time.time_ns() // 1_000_000


def block(entity: str) -> Decision:
    at = now()
    return Decision(
        tenant_id="acme", scope=Scope.user, entity_id=entity, action=Action.block,
        until=rfc3339(at + 600_000), until_ms=at + 600_000, rule_id="r", reason="test",
        decided_at=rfc3339(at),
    )  # fmt: skip


async def answer(http: aiohttp.ClientSession, base: str, user: str) -> str:
    params = {"tenant_id": "acme", "user_id": user}
    async with http.get(f"{base}/v1/decision", params=params) as r:
        body: dict[str, str] = await r.json()
        return body["action"]


async def becomes(
    http: aiohttp.ClientSession, base: str, user: str, action: str, timeout_s: float = 3.0
) -> float:
    """Seconds until the API answers `action` for the user; fails after timeout_s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await answer(http, base, user) == action:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"the API did not answer {action} for {user} within {timeout_s}s")


async def test_changes_reach_a_warm_cache_at_once(
    redis: Redis, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(api_cache_max_age_s=LONG_AGE_S)
    store = DecisionStore(redis)
    async with serve_api(settings, redis) as base, aiohttp.ClientSession() as http:
        for _ in range(3):  # warm: the cache now holds "no decision" for u1
            assert await answer(http, base, "u1") == "allow"
        await store.save([block("u1")], now())
        await becomes(http, base, "u1", "block")

        allow = manual_decision("acme", Scope.user, "u1", Action.allow, 600, "vip", "test", now())
        await store.override(allow, now())
        await becomes(http, base, "u1", "allow")

        await store.lift(
            manual_decision("acme", Scope.user, "u1", Action.allow, 1, "x", "t", now())
        )
        assert await answer(http, base, "u1") == "allow"  # lifted: nothing in force
        await store.save([block("u1")], now())
        await becomes(http, base, "u1", "block")


async def test_lost_subscription_falls_back_to_redis(
    redis: Redis, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(api_cache_max_age_s=LONG_AGE_S)
    store = DecisionStore(redis)
    async with serve_api(settings, redis) as base, aiohttp.ClientSession() as http:
        assert await answer(http, base, "u2") == "allow"
        # Cut the cache's subscription, and change the decision while it is down: the change's
        # announcement is lost, yet the API must not keep answering from stale memory.
        await redis.client_kill_filter(_type="pubsub")
        await store.save([block("u2")], now())
        await becomes(http, base, "u2", "block")


async def test_an_unannounced_change_is_served_within_the_maximum_age(
    redis: Redis, settings_factory: Callable[..., Settings]
) -> None:
    """The staleness bound when an announcement is lost with the subscription still up: a
    decision written to Redis without its message is not seen at once (the answer comes from
    memory), and is seen once the cached entry is older than the maximum age."""
    max_age_s = 1.5
    settings = settings_factory(api_cache_max_age_s=max_age_s)
    decision = block("u3")
    async with serve_api(settings, redis) as base, aiohttp.ClientSession() as http:
        assert await answer(http, base, "u3") == "allow"  # cached: no decision
        cached_at = time.monotonic()
        # The decision as the store writes it, minus the announcement on the channel.
        await redis.hset(
            keys.decision_key("acme", Scope.user, "u3"),
            mapping={
                "rank": int(STRICTNESS[Action.block]),
                "until_ms": decision.until_ms,
                "json": decision.model_dump_json(),
            },
        )
        assert await answer(http, base, "u3") == "allow"  # still from memory
        waited = await becomes(http, base, "u3", "block", timeout_s=max_age_s + 3)
        seen_after_s = time.monotonic() - cached_at
        assert max_age_s - 0.3 <= seen_after_s <= max_age_s + 3, (waited, seen_after_s)
