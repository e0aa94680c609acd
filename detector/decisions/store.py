"""Decisions in Redis: write them (extend, never duplicate), read the strictest that applies."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from redis.asyncio import Redis

from detector import keys
from detector.decisions.policy import STRICTNESS
from detector.schemas import Decision, Scope

# Atomic upsert: a stricter decision replaces a milder one, the same action with a later expiry
# extends it, anything else leaves the stored decision as it is.
_UPSERT_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'rank', 'until_ms')
local rank = tonumber(ARGV[1])
local until_ms = tonumber(ARGV[2])
if cur[1] then
  local cur_rank = tonumber(cur[1])
  if cur_rank > rank then return 'kept' end
  if cur_rank == rank then
    if tonumber(cur[2]) >= until_ms then return 'kept' end
    redis.call('HSET', KEYS[1], 'until_ms', ARGV[2], 'json', ARGV[3])
    redis.call('PEXPIREAT', KEYS[1], ARGV[2])
    return 'extended'
  end
end
redis.call('HSET', KEYS[1], 'rank', ARGV[1], 'until_ms', ARGV[2], 'json', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], 0, ARGV[4])
redis.call('PUBLISH', ARGV[5], KEYS[1])
return 'new'
"""


class Change(StrEnum):
    new = "new"
    extended = "extended"
    kept = "kept"


class DecisionStore:
    """Reads and writes the rate-limit decisions gateways look up."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._upsert = redis.register_script(_UPSERT_LUA)

    async def save(self, decisions: Sequence[Decision]) -> list[Change]:
        """Store enforced decisions in one round trip; say for each whether it changed anything."""
        if not decisions:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for d in decisions:
            await self._upsert(
                keys=[
                    keys.decision_key(d.tenant_id, d.scope, d.entity_id),
                    keys.audit_key(d.tenant_id),
                ],
                args=[
                    int(STRICTNESS[d.action]),
                    d.until_ms,
                    d.model_dump_json(),
                    keys.AUDIT_MAX_ENTRIES - 1,
                    keys.DECISIONS_CHANNEL,
                ],
                client=pipe,
            )
        replies = await pipe.execute()
        return [Change(r.decode() if isinstance(r, bytes) else r) for r in replies]

    async def lookup(
        self, entities: Sequence[tuple[str, Scope, str]], now_ms: int
    ) -> list[Decision]:
        """Decisions in force for any of the given (tenant, scope, entity), strictest first."""
        pipe = self._redis.pipeline(transaction=False)
        for tenant, scope, entity in entities:
            pipe.hget(keys.decision_key(tenant, scope, entity), "json")
        found = []
        for raw in await pipe.execute():
            if raw is None:
                continue
            decision = Decision.model_validate_json(raw)
            if decision.until_ms > now_ms:
                found.append(decision)
        found.sort(key=lambda d: (-STRICTNESS[d.action], -d.until_ms))
        return found

    async def claim_alert(
        self, tenant: str, rule_id: str, scope: Scope, entity: str, cooldown_s: int
    ) -> bool:
        """True once per cooldown for a (rule, entity): the caller may alert."""
        key = keys.cooldown_key(tenant, rule_id, scope, entity)
        return bool(await self._redis.set(key, b"1", nx=True, ex=cooldown_s))

    async def audit(self, tenant: str, limit: int = 50) -> list[Decision]:
        """The tenant's most recent decision changes, newest first."""
        raw = await self._redis.lrange(keys.audit_key(tenant), 0, limit - 1)
        return [Decision.model_validate_json(item) for item in raw]
