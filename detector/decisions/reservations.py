"""Budget reservations: a gateway holds an estimated cost against every budget that applies
before it forwards a request, atomically, so that concurrent requests cannot together spend
past a budget; the request's cost event (same id) releases the hold when it is counted (in the
windows' own atomic write, detector.windows.counters), and an unsettled hold expires on its own.

All of one tenant's keys share its Redis Cluster slot, so one Lua call checks and holds across
every budget of the request at once. Spend comes from the day buckets of the budget's period;
holds live in one hash per (budget, entity): request id -> "micro-dollars:expiry ms".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo

import orjson

from detector import keys
from detector.redis_client import RedisClient
from detector.rules.schema import BudgetRule, RuleSet
from detector.schemas import Scope
from detector.windows.buckets import window_buckets
from detector.windows.counters import window_slot

# KEYS[1]: the tenant's hold index for this request (declares the slot).
# ARGV[1]: JSON {"id": request id, "amount": micros, "now": ms, "ttl": ms, "peek": bool,
#                "budgets": [[hold key, limit micros, [day bucket keys...], field], ...]}
# The field names the entity in the tenant's bucket hashes; without one (the global scope)
# each bucket is a key of its own.
# With peek, nothing is held: the call only says what remains.
# Returns {granted (1/0), remaining micros per budget after the hold (or before, if refused)}.
_RESERVE_LUA = """
local p = cjson.decode(ARGV[1])
local now, amount = p.now, p.amount
local remaining = {}
local ok = 1
for i, b in ipairs(p.budgets) do
  local spent = 0
  for _, key in ipairs(b[3]) do
    local v
    if b[4] then v = redis.call('HGET', key, b[4]) else v = redis.call('GET', key) end
    if v and #v >= 8 then spent = spent + struct.unpack('>i8', v) end
  end
  local held = 0
  local holds = redis.call('HGETALL', b[1])
  for j = 1, #holds, 2 do
    local micros, expiry = string.match(holds[j + 1], '^(%d+):(%d+)$')
    if tonumber(expiry) <= now then
      redis.call('HDEL', b[1], holds[j])
    else
      held = held + tonumber(micros)
    end
  end
  remaining[i] = b[2] - spent - held
  if remaining[i] < amount then ok = 0 end
end
if ok == 0 or p.peek then
  local out = {ok}
  for i = 1, #remaining do out[#out + 1] = string.format('%d', remaining[i]) end
  return out
end
local value = string.format('%d:%d', amount, now + p.ttl)
local out = {1}
for i, b in ipairs(p.budgets) do
  redis.call('HSET', b[1], p.id, value)
  redis.call('PEXPIRE', b[1], p.ttl * 2)
  redis.call('RPUSH', KEYS[1], b[1])
  out[#out + 1] = string.format('%d', remaining[i] - amount)
end
redis.call('PEXPIRE', KEYS[1], p.ttl * 2)
return out
"""


# KEYS[1]: any key of the tenant; ARGV: request ids whose cost events were counted.
@dataclass(frozen=True, slots=True)
class Held:
    budget: BudgetRule
    scope: Scope
    entity_id: str
    remaining_usd_micros: int


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: bool
    budgets: list[Held]


def applicable(
    rules: RuleSet, tenant: str, named: dict[Scope, str]
) -> list[tuple[BudgetRule, str]]:
    """The budgets (and their entities) that a request naming these entities falls under."""
    out = []
    for budget in rules.budgets:
        entity = tenant if budget.scope is Scope.tenant else named.get(budget.scope)
        if entity is not None and budget.scope is not Scope.global_:
            out.append((budget, entity))
    return out


class ReservationStore:
    """Holds and releases estimated costs against budgets in Redis."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._reserve = redis.register_script(_RESERVE_LUA)

    async def reserve(
        self,
        tenant: str,
        request_id: str,
        amount_usd_micros: int,
        budgets: Sequence[tuple[BudgetRule, str]],
        hold_s: int,
        now_ms: int,
        zone: tzinfo | None = None,
    ) -> Reservation:
        """Hold the amount against every budget, or nothing if any would go over.

        `zone` is the tenant's time zone: its budget periods start at local midnight."""
        return await self._call(
            tenant, request_id, amount_usd_micros, budgets, hold_s, now_ms, zone=zone
        )

    async def _call(
        self,
        tenant: str,
        request_id: str,
        amount_usd_micros: int,
        budgets: Sequence[tuple[BudgetRule, str]],
        hold_s: int,
        now_ms: int,
        peek: bool = False,
        zone: tzinfo | None = None,
    ) -> Reservation:
        asks = []
        for budget, entity in budgets:
            size_s, starts = window_buckets(budget.window, now_ms, zone)
            group, field = window_slot(tenant, budget.scope, entity)
            limit = round(budget.amount_for(entity) * 1_000_000)
            hold_key = keys.hold_key(tenant, budget.id, budget.scope, entity)
            buckets = [f"{group}{size_s}:{start}" for start in starts]
            ask: list[object] = [hold_key, limit, buckets]
            if field is not None:
                ask.append(field)
            asks.append(ask)
        payload = {
            "id": request_id,
            "amount": amount_usd_micros,
            "now": now_ms,
            "ttl": hold_s * 1000,
            "budgets": asks,
            "peek": peek,
        }
        reply = await self._reserve(
            keys=[keys.hold_index_key(tenant, request_id)], args=[orjson.dumps(payload)]
        )
        granted = int(reply[0]) == 1
        held = [
            Held(budget, budget.scope, entity, int(left))
            for (budget, entity), left in zip(budgets, reply[1:], strict=True)
        ]
        return Reservation(granted, held)

    async def remaining(
        self,
        tenant: str,
        budgets: Sequence[tuple[BudgetRule, str]],
        now_ms: int,
        zone: tzinfo | None = None,
    ) -> list[Held]:
        """What is left of each budget after spend and open holds, without holding anything."""
        if not budgets:
            return []
        result = await self._call(tenant, "", 0, budgets, 1, now_ms, peek=True, zone=zone)
        return result.budgets
