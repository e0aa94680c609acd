"""Manual overrides through the API and the command line, over real Redis and Kafka."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import aiohttp
import orjson
from pydantic import SecretStr
from redis.asyncio import Redis

from detector import keys
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.schemas import Action, Decision, Scope
from detector.timefmt import rfc3339

from .conftest import read_topic, serve_api, settings_env

TOKENS = "ops-secret=admin;acme-ops=admin@acme;gw-secret=decision:read"
ADMIN = {"Authorization": "Bearer ops-secret"}


def rule_block(entity: str) -> Decision:
    now_ms = time.time_ns() // 1_000_000
    return Decision(
        tenant_id="acme",
        scope=Scope.user,
        entity_id=entity,
        action=Action.block,
        until=rfc3339(now_ms + 600_000),
        until_ms=now_ms + 600_000,
        rule_id="user-hourly-spend",
        reason="cost_usd over 1h is 30 (> 25) for user " + entity,
        decided_at=rfc3339(now_ms),
    )


async def test_allow_override_beats_a_rule_block_and_lift_ends_both(
    redis: Redis, kafka_topics: Settings
) -> None:
    settings = kafka_topics.model_copy(update={"api_tokens": SecretStr(TOKENS)})
    await DecisionStore(redis).save([rule_block("u1")], time.time_ns() // 1_000_000)
    gw = {"Authorization": "Bearer gw-secret"}
    lookup = {"tenant_id": "acme", "user_id": "u1"}
    async with serve_api(settings, redis) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/decision", params=lookup, headers=gw) as r:
            assert (await r.json())["action"] == "block"

        ask = {
            "tenant_id": "acme",
            "scope": "user",
            "entity_id": "u1",
            "action": "allow",
            "duration": "30m",
            "reason": "customer demo, approved by finance",
        }
        async with http.post(f"{base}/v1/admin/overrides", json=ask, headers=ADMIN) as r:
            assert r.status == 201
            made = await r.json()
            assert made["action"] == "allow" and made["source"] == "manual"
            assert made["actor"] == "api"
        async with http.get(f"{base}/v1/decision", params=lookup, headers=gw) as r:
            body = await r.json()
            assert body["action"] == "allow"
            assert body["reasons"][0]["rule_id"] == "manual"

        params = {"tenant_id": "acme", "scope": "user", "entity_id": "u1", "reason": "done"}
        async with http.delete(f"{base}/v1/admin/overrides", params=params, headers=ADMIN) as r:
            lifted = (await r.json())["lifted"]
            assert sorted(d["rule_id"] for d in lifted) == ["manual", "user-hourly-spend"]
        async with http.get(f"{base}/v1/decision", params=lookup, headers=gw) as r:
            body = await r.json()
            assert body["action"] == "allow" and body["reasons"] == []

        async with http.get(
            f"{base}/v1/admin/audit", params={"tenant_id": "acme"}, headers=ADMIN
        ) as r:
            entries = (await r.json())["entries"]
        assert [(e["lifted"], e["rule_id"], e["action"]) for e in entries] == [
            (True, "manual", "allow"),
            (False, "manual", "allow"),
            (False, "user-hourly-spend", "block"),
        ]
        assert entries[0]["reason"] == "done"

    published = await read_topic(settings, keys.TOPIC_DECISIONS, 2)
    assert [orjson.loads(m.value)["source"] for m in published] == ["manual", "manual"]


async def test_admin_endpoints_check_scope_tenant_and_input(
    redis: Redis, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(api_tokens=SecretStr(TOKENS))
    good = {
        "tenant_id": "globex",
        "scope": "tenant",
        "action": "block",
        "duration": "1h",
        "reason": "abuse",
    }
    async with serve_api(settings, redis) as base, aiohttp.ClientSession() as http:

        async def post(body: object, token: str) -> tuple[int, dict[str, object]]:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{base}/v1/admin/overrides", json=body, headers=headers) as r:
                return r.status, await r.json()

        assert (await post(good, "gw-secret"))[0] == 403  # no admin scope
        assert (await post(good, "acme-ops"))[0] == 403  # admin of another tenant
        status, body = await post({**good, "action": "alert"}, "ops-secret")
        assert status == 422 and body["error"] == "action: must be allow, throttle or block"
        status, body = await post({**good, "duration": "forever"}, "ops-secret")
        assert status == 422 and str(body["error"]).startswith("duration: expected a duration")
        status, body = await post({**good, "scope": "user"}, "ops-secret")
        assert status == 422 and body["error"] == "entity_id is required for scope user"
        status, body = await post({**good, "colour": "red"}, "ops-secret")
        assert status == 422 and body["error"] == "colour: Extra inputs are not permitted"
        status, body = await post(good, "ops-secret")
        assert status == 201 and body["entity_id"] == "globex"


def test_cli_override_and_audit(settings_factory: Callable[..., Settings], redis: Redis) -> None:
    env = settings_env(settings_factory())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603  (our own command)
            [sys.executable, "-m", "detector", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    done = run("override", "block", "--tenant", "acme", "--scope", "api_key", "--id", "k-leaked",
               "--for", "2h", "--reason", "key posted on a forum")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("block api_key k-leaked (acme) until ")
    done = run("audit", "--tenant", "acme")
    assert "block    api_key:k-leaked" in done.stdout and "key posted on a forum" in done.stdout
    done = run("override", "lift", "--tenant", "acme", "--scope", "api_key", "--id", "k-leaked")
    assert done.stdout.strip() == "lifted block (manual) on api_key k-leaked"
    done = run("override", "block", "--tenant", "acme", "--scope", "user", "--reason", "x")
    assert done.returncode == 1 and "--id is required for scope user" in done.stderr
