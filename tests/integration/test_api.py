"""The lookup API over real Redis: answers, validation, auth, fail-open, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from detector.config import Settings
from detector.decisions.store import Change, DecisionStore
from detector.schemas import Action, Decision, Scope
from detector.timefmt import rfc3339

from .conftest import serve_api

TOKENS = "gw-secret=decision:read;acme-only=decision:read,spend:read@acme;ops-secret=admin"


def now() -> int:
    return time.time_ns() // 1_000_000


def decision(scope: Scope, entity: str, action: Action, seconds: int, rule: str) -> Decision:
    now_ms = time.time_ns() // 1_000_000
    return Decision(
        tenant_id="acme",
        scope=scope,
        entity_id=entity,
        action=action,
        until=rfc3339(now_ms + seconds * 1000),
        until_ms=now_ms + seconds * 1000,
        rule_id=rule,
        reason="test",
        decided_at=rfc3339(now_ms),
    )


async def test_strictest_decision_of_the_named_entities_wins(
    redis: Redis, settings_factory: Callable[..., Settings]
) -> None:
    store = DecisionStore(redis)
    changes = await store.save(
        [
            decision(Scope.user, "u1", Action.throttle, 120, "user-rule"),
            decision(Scope.api_key, "k9", Action.block, 60, "key-rule"),
        ],
        now(),
    )
    assert changes == [Change.new, Change.new]
    async with serve_api(settings_factory(), redis) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/decision", params={"tenant_id": "acme"}) as r:
            assert (await r.json())["action"] == "allow"
        params = {"tenant_id": "acme", "user_id": "u1"}
        async with http.get(f"{base}/v1/decision", params=params) as r:
            body = await r.json()
            assert body["action"] == "throttle" and 110 <= body["retry_after_s"] <= 120
        params = {"tenant_id": "acme", "user_id": "u1", "api_key_id": "k9"}
        async with http.get(f"{base}/v1/decision", params=params) as r:
            body = await r.json()
            assert body["action"] == "block"
            assert [x["rule_id"] for x in body["reasons"]] == ["key-rule", "user-rule"]
        # Another tenant's user with the same id is not affected.
        params = {"tenant_id": "globex", "user_id": "u1"}
        async with http.get(f"{base}/v1/decision", params=params) as r:
            assert (await r.json())["action"] == "allow"


async def test_retriggered_decision_is_extended_not_duplicated(redis: Redis) -> None:
    store = DecisionStore(redis)
    block_1m = decision(Scope.user, "u1", Action.block, 60, "r")
    assert await store.save([block_1m], now()) == [Change.new]
    block_10m = decision(Scope.user, "u1", Action.block, 600, "r")
    assert await store.save([block_10m], now()) == [Change.extended]
    throttle = decision(Scope.user, "u1", Action.throttle, 900, "r")
    assert await store.save([throttle], now()) == [Change.kept]
    found = await store.lookup([("acme", Scope.user, "u1")], time.time_ns() // 1_000_000)
    assert len(found) == 1 and found[0].action is Action.block
    assert len(await store.audit("acme")) == 1
    # On a clock past the block's end (a replay's event time), the stored block is over and a
    # throttle is new.
    assert await store.save([throttle], block_10m.until_ms + 1) == [Change.new]


async def test_cooldown_follows_the_callers_clock(redis: Redis) -> None:
    store = DecisionStore(redis)
    t0 = 1_700_000_000_000
    assert await store.claim_alert("acme", "r", Scope.user, "u1", 600, t0) is True
    assert await store.claim_alert("acme", "r", Scope.user, "u1", 600, t0 + 599_999) is False
    assert await store.claim_alert("acme", "r", Scope.user, "u2", 600, t0 + 1) is True
    assert await store.claim_alert("acme", "r", Scope.user, "u1", 600, t0 + 600_000) is True


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/v1/decision", {}, "tenant_id is required"),
        ("/v1/decision", {"tenant_id": "a{b}"}, "tenant_id must be 1-128 characters"),
        ("/v1/decision", {"tenant_id": "acme", "user_id": "x\x01"}, "user_id must be 1-256"),
        ("/v1/decision", {"tenant_id": "acme", "user_id": "u" * 300}, "user_id must be 1-256"),
        ("/v1/spend", {"tenant_id": "acme", "scope": "planet"}, "scope must be one of"),
        ("/v1/spend", {"tenant_id": "acme", "window": "2h"}, "window must be one of"),
        ("/v1/spend", {"tenant_id": "acme", "scope": "user"}, "id is required for scope user"),
        # Parameters the scope does not use are still checked (schemathesis found these).
        ("/v1/spend", {"scope": "global", "tenant_id": "a{b}"}, "tenant_id must be 1-128"),
        ("/v1/spend", {"scope": "global", "id": "x\x01"}, "id must be 1-256"),
        ("/v1/spend", {"tenant_id": "acme", "id": ""}, "id must be 1-256"),
    ],
)
async def test_bad_input_is_422_with_a_message(
    redis: Redis,
    settings_factory: Callable[..., Settings],
    path: str,
    params: dict[str, str],
    message: str,
) -> None:
    async with serve_api(settings_factory(), redis) as base, aiohttp.ClientSession() as http:
        async with http.get(base + path, params=params) as r:
            assert r.status == 422
            assert message in (await r.json())["error"]


async def test_tokens_scopes_and_tenant_binding(
    redis: Redis, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(api_tokens=SecretStr(TOKENS))
    async with serve_api(settings, redis) as base, aiohttp.ClientSession() as http:

        async def status(path: str, params: dict[str, str], token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.get(base + path, params=params, headers=headers) as r:
                return r.status

        acme = {"tenant_id": "acme"}
        globex = {"tenant_id": "globex"}
        assert await status("/v1/decision", acme, None) == 401
        assert await status("/v1/decision", acme, "wrong-token") == 401
        assert await status("/v1/decision", acme, "gw-secret") == 200
        assert await status("/v1/spend", acme, "gw-secret") == 403  # no spend:read
        assert await status("/v1/spend", acme, "acme-only") == 200
        assert await status("/v1/decision", globex, "acme-only") == 403  # bound to acme
        assert await status("/v1/spend", globex, "ops-secret") == 200
        assert await status("/healthz", {}, None) == 200


async def test_redis_down_fails_open_and_readiness_drops(
    settings_factory: Callable[..., Settings],
) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    settings = settings_factory(redis_url="redis://127.0.0.1:1/0")
    async with serve_api(settings, dead) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/decision", params={"tenant_id": "acme"}) as r:
            body = await r.json()
            assert r.status == 200 and body["action"] == "allow" and body["degraded"] is True
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 503
    per_tenant = settings_factory(redis_url="redis://127.0.0.1:1/0", fail_closed_tenants="bank")
    async with serve_api(per_tenant, dead) as base, aiohttp.ClientSession() as http:
        for tenant, expected in (("bank", "block"), ("acme", "allow")):
            async with http.get(f"{base}/v1/decision", params={"tenant_id": tenant}) as r:
                assert (await r.json())["action"] == expected
    closed = settings_factory(redis_url="redis://127.0.0.1:1/0", fail_open=False)
    async with serve_api(closed, dead) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/decision", params={"tenant_id": "acme"}) as r:
            body = await r.json()
            assert body["action"] == "block" and body["degraded"] is True
    await dead.aclose()


async def test_metrics_and_openapi(redis: Redis, settings_factory: Callable[..., Settings]) -> None:
    async with serve_api(settings_factory(), redis) as base, aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(f"{base}/v1/decision", params={"tenant_id": "acme"}) as r:
                assert r.status == 200
        async with http.get(f"{base}/v1/decision") as r:
            assert r.status == 422
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
        assert 'detector_api_requests_total{endpoint="/v1/decision",outcome="200"} 3.0' in text
        assert 'detector_api_requests_total{endpoint="/v1/decision",outcome="422"} 1.0' in text
        async with http.get(f"{base}/openapi.json") as r:
            spec = await r.json()
        assert spec["openapi"].startswith("3.")
        assert "/v1/decision" in spec["paths"] and "/v1/spend" in spec["paths"]


async def test_throttle_names_its_own_wait_and_rate(
    redis: Redis, settings_factory: Callable[..., Settings]
) -> None:
    throttle = decision(Scope.user, "u7", Action.throttle, 600, "user-burn").model_copy(
        update={"retry_after_s": 30, "rate_per_min": 6}
    )
    await DecisionStore(redis).save([throttle], now())
    async with serve_api(settings_factory(), redis) as base, aiohttp.ClientSession() as http:
        params = {"tenant_id": "acme", "user_id": "u7"}
        async with http.get(f"{base}/v1/decision", params=params) as r:
            body = await r.json()
    assert body["action"] == "throttle" and body["retry_after_s"] == 30
    assert body["reasons"][0]["rate_per_min"] == 6


async def test_batch_lookup_answers_each_request_in_order(
    redis: Redis, settings_factory: Callable[..., Settings]
) -> None:
    await DecisionStore(redis).save([decision(Scope.user, "u1", Action.block, 60, "r")], now())
    asks = [
        {"tenant_id": "acme", "user_id": "u1"},
        {"tenant_id": "acme", "user_id": "u2", "model": "gpt-4o"},
        {"tenant_id": "globex", "user_id": "u1"},
    ]
    async with serve_api(settings_factory(), redis) as base, aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/decision/batch", json={"requests": asks}) as r:
            assert r.status == 200
            answers = (await r.json())["answers"]
        assert [a["action"] for a in answers] == ["block", "allow", "allow"]
        bad = {"requests": [{"tenant_id": "acme"}, {"tenant_id": "acme", "user_id": "\x01"}]}
        async with http.post(f"{base}/v1/decision/batch", json=bad) as r:
            assert r.status == 422
            assert (await r.json())["error"] == (
                "requests[1].user_id must be 1-256 printable characters"
            )
        async with http.post(f"{base}/v1/decision/batch", json={"requests": []}) as r:
            assert r.status == 422
