"""Decisions in Redis: write them (extend, never duplicate), read the strictest that applies."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from detector import keys
from detector.decisions.policy import STRICTNESS
from detector.decisions.reservations import ReservationStore
from detector.redis_client import RedisClient, load_scripts
from detector.schemas import Decision, Scope

# Atomic upsert: a stricter decision replaces a milder one, the same action with a later expiry
# extends it, anything else leaves the stored decision as it is. Times are on the caller's
# clock (ARGV[6]: wall time in the worker, event time in a backtest); a stored decision whose
# end has passed on that clock counts as absent, and lifetimes are relative to it.
_UPSERT_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'rank', 'until_ms')
local rank = tonumber(ARGV[1])
local until_ms = tonumber(ARGV[2])
local now_ms = tonumber(ARGV[6])
local ttl_ms = string.format('%d', math.max(until_ms - now_ms, 1))
if cur[1] and tonumber(cur[2]) > now_ms then
  local cur_rank = tonumber(cur[1])
  if cur_rank > rank then return 'kept' end
  if cur_rank == rank then
    if tonumber(cur[2]) >= until_ms then return 'kept' end
    redis.call('HSET', KEYS[1], 'until_ms', ARGV[2], 'json', ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ttl_ms)
    redis.call('PUBLISH', ARGV[5], ARGV[7])
    return 'extended'
  end
end
redis.call('HSET', KEYS[1], 'rank', ARGV[1], 'until_ms', ARGV[2], 'json', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], 0, ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[7])
return 'new'
"""

# A (rule, entity) may alert when its cooldown, kept as an end time on the caller's clock, is
# over; claiming starts a new one.
_CLAIM_LUA = """
local now_ms = tonumber(ARGV[1])
local cooldown_ms = tonumber(ARGV[2])
local until_ms = redis.call('GET', KEYS[1])
if until_ms and tonumber(until_ms) > now_ms then return 0 end
redis.call('SET', KEYS[1], string.format('%d', now_ms + cooldown_ms), 'PX', cooldown_ms)
return 1
"""

# A manual decision: the override, its audit entry and its announcement in one atomic call.
# (PUBLISH is not allowed in a cluster pipeline, and a script keeps the announcement atomic
# with the change on one server and on a cluster alike.)
_OVERRIDE_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# Ending an entity's override and rule decision: returns what they held (nil where absent).
_LIFT_LUA = """
local override = redis.call('GET', KEYS[1])
local rule = redis.call('HGET', KEYS[2], 'json')
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('LPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], 0, ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {override, rule}
"""


Entity = tuple[str, Scope, str]  # tenant, scope, entity id
Stored = tuple[Decision | None, Decision | None]  # an entity's override and rule decision


def _parse(raw: bytes | None) -> Decision | None:
    return None if raw is None else Decision.model_validate_json(raw)


def strictest(stored: Sequence[Stored], now_ms: int) -> list[Decision]:
    """Decisions in force, strictest first; an override hides its entity's rule decision."""
    found = []
    for override, rule in stored:
        for decision in (override, rule):
            if decision is not None and decision.until_ms > now_ms:
                found.append(decision)
                break
    found.sort(key=lambda d: (-STRICTNESS[d.action], -d.until_ms))
    return found


def changed_message(tenant: str, scope: str, entity: str) -> str:
    """What is published on the decisions channel when an entity's decision changes.

    >>> changed_message("acme", "user", "u1")
    'acme\\x1fuser\\x1fu1'
    """
    return f"{tenant}\x1f{scope}\x1f{entity}"


def parse_changed(message: bytes) -> Entity | None:
    """The entity named by a decisions-channel message, None when it is not one of ours."""
    parts = message.decode(errors="replace").split("\x1f")
    if len(parts) != 3:
        return None
    try:
        return parts[0], Scope(parts[1]), parts[2]
    except ValueError:
        return None


class Change(StrEnum):
    new = "new"
    extended = "extended"
    kept = "kept"


class DecisionStore:
    """Reads and writes the rate-limit decisions gateways look up."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self.reservations = ReservationStore(redis)
        self._upsert = redis.register_script(_UPSERT_LUA)
        self._claim = redis.register_script(_CLAIM_LUA)
        self._override = redis.register_script(_OVERRIDE_LUA)
        self._lift = redis.register_script(_LIFT_LUA)
        # Scripts called on their own load themselves after a NOSCRIPT; the upsert runs in a
        # pipeline, which on a cluster needs it loaded on every primary beforehand.
        self._cluster = isinstance(redis, RedisCluster)
        self._scripts_loaded = False

    async def save(self, decisions: Sequence[Decision], now_ms: int) -> list[Change]:
        """Store enforced decisions in one round trip; say for each whether it changed anything."""
        if not decisions:
            return []
        if self._cluster and not self._scripts_loaded:
            await load_scripts(self._redis, [self._upsert])
            self._scripts_loaded = True
        pipe: Any = self._redis.pipeline(transaction=False)
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
                    now_ms,
                    changed_message(d.tenant_id, d.scope, d.entity_id),
                ],
                client=pipe,
            )
        try:
            replies = await pipe.execute()
        except NoScriptError:
            self._scripts_loaded = False  # a node lost its scripts; the caller's retry loads them
            raise
        finally:
            # A pipeline that runs scripts can keep a connection when cut off before its own
            # try block (see WindowStore._execute); reset() gives it back.
            await pipe.reset()  # type: ignore[no-untyped-call, unused-ignore]
        return [Change(r.decode() if isinstance(r, bytes) else r) for r in replies]

    async def lookup(
        self, entities: Sequence[tuple[str, Scope, str]], now_ms: int
    ) -> list[Decision]:
        """Decisions in force for any of the given (tenant, scope, entity), strictest first.

        A manual override of an entity takes the place of its rule decision, so an `allow`
        override lets that entity through whatever its rules decided.
        """
        return strictest(await self.fetch(entities), now_ms)

    async def fetch(self, entities: Sequence[Entity]) -> list[Stored]:
        """(override, rule decision) stored for each entity, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for tenant, scope, entity in entities:
            pipe.get(keys.override_key(tenant, scope, entity))
            pipe.hget(keys.decision_key(tenant, scope, entity), "json")
        replies = await pipe.execute()
        return [
            (_parse(override_raw), _parse(rule_raw))
            for override_raw, rule_raw in zip(replies[::2], replies[1::2], strict=True)
        ]

    async def override(self, decision: Decision, now_ms: int) -> None:
        """Put a manual decision in force for its entity until `decision.until_ms`."""
        await self._override(
            keys=[
                keys.override_key(decision.tenant_id, decision.scope, decision.entity_id),
                keys.audit_key(decision.tenant_id),
            ],
            args=[
                decision.model_dump_json(),
                max(decision.until_ms - now_ms, 1),
                keys.AUDIT_MAX_ENTRIES - 1,
                keys.DECISIONS_CHANNEL,
                changed_message(decision.tenant_id, decision.scope, decision.entity_id),
            ],
        )

    async def lift(self, record: Decision) -> list[Decision]:
        """End the override and the rule decision of `record`'s entity now; return what ended."""
        tenant, scope, entity = record.tenant_id, record.scope, record.entity_id
        override_raw, rule_raw = await self._lift(
            keys=[
                keys.override_key(tenant, scope, entity),
                keys.decision_key(tenant, scope, entity),
                keys.audit_key(tenant),
            ],
            args=[
                record.model_dump_json(),
                keys.AUDIT_MAX_ENTRIES - 1,
                keys.DECISIONS_CHANNEL,
                changed_message(tenant, scope, entity),
            ],
        )
        return [Decision.model_validate_json(r) for r in (override_raw, rule_raw) if r is not None]

    async def claim_alert(
        self, tenant: str, rule_id: str, scope: Scope, entity: str, cooldown_s: int, now_ms: int
    ) -> bool:
        """True once per cooldown for a (rule, entity): the caller may alert."""
        key = keys.cooldown_key(tenant, rule_id, scope, entity)
        return bool(await self._claim(keys=[key], args=[now_ms, cooldown_s * 1000]))

    async def audit(self, tenant: str, limit: int = 50) -> list[Decision]:
        """The tenant's most recent decision changes, newest first."""
        raw = await self._redis.lrange(keys.audit_key(tenant), 0, limit - 1)
        return [Decision.model_validate_json(item) for item in raw]
