"""Redis sliding sums: apply a batch of priced events exactly once, read windows back.

A batch is pre-aggregated in memory (one increment per key and field), then each tenant's part
goes to Redis as one Lua call that first checks every event id against the dedup sets and
applies nothing if any was seen before; the caller drops those and retries. So the dedup marks
and the increments land together or not at all, and a worker killed between writing Redis and
committing its Kafka offset re-reads the events, finds them seen, and counts nothing twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from detector import keys
from detector.pricing import Costs
from detector.schemas import Scope, UsageEvent
from detector.windows.buckets import HOUR_S, bucket_start_ms, window_buckets, writable_buckets

# Metric name -> Redis hash field. Money is stored in integer micro-dollars.
METRIC_FIELDS: dict[str, str] = {
    "cost_usd": "c",
    "input_cost_usd": "ci",
    "output_cost_usd": "co",
    "input_tokens": "ti",
    "output_tokens": "to",
    "cached_input_tokens": "tc",
    "requests": "r",
    "errors": "e",
    "unpriced_requests": "u",
}
MONEY_METRICS = frozenset({"cost_usd", "input_cost_usd", "output_cost_usd"})
WINDOW_SCOPES: tuple[Scope, ...] = tuple(Scope)

_APPLY_LUA = """
local n = tonumber(ARGV[1])
local dups = {}
for i = 1, n do
  if redis.call('SISMEMBER', KEYS[i], ARGV[2 + i]) == 1 then dups[#dups + 1] = i end
end
if #dups > 0 then return dups end
for i = 1, n do
  redis.call('SADD', KEYS[i], ARGV[2 + i])
  redis.call('PEXPIREAT', KEYS[i], ARGV[2])
end
local a = 3 + n
for k = n + 1, #KEYS do
  local expire_at = ARGV[a]
  local nf = tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, nf do
    redis.call('HINCRBY', KEYS[k], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('PEXPIREAT', KEYS[k], expire_at)
end
return dups
"""

# Sums every metric over a run of consecutive buckets, for each requested window.
_SUM_LUA = (
    "local fields = {"
    + ", ".join(f"'{f}'" for f in METRIC_FIELDS.values())
    + """}
local out = {}
local a = 2
for _ = 1, tonumber(ARGV[1]) do
  local prefix = ARGV[a]
  local size_ms = tonumber(ARGV[a + 1])
  local first_ms = tonumber(ARGV[a + 2])
  local count = tonumber(ARGV[a + 3])
  a = a + 4
  local sums = {}
  for f = 1, #fields do sums[f] = 0 end
  for b = 0, count - 1 do
    local key = prefix .. string.format('%d', first_ms + b * size_ms)
    local values = redis.call('HMGET', key, unpack(fields))
    for f = 1, #fields do
      if values[f] then sums[f] = sums[f] + tonumber(values[f]) end
    end
  end
  for f = 1, #fields do out[#out + 1] = sums[f] end
end
return out
"""
)


@dataclass(frozen=True, slots=True)
class PricedEvent:
    event: UsageEvent
    costs: Costs


@dataclass(frozen=True, slots=True)
class Touched:
    """An entity whose windows changed in a batch."""

    tenant_id: str
    scope: Scope
    entity_id: str


@dataclass(slots=True)
class ApplyResult:
    applied: list[PricedEvent]
    duplicates: list[PricedEvent]
    touched: set[Touched]


def event_metrics(item: PricedEvent) -> dict[str, int]:
    """The field increments one event contributes to every bucket it lands in (zeros left out)."""
    ev, costs = item.event, item.costs
    values = {
        "c": costs.total_usd_micros,
        "ci": costs.input_usd_micros
        + costs.cached_read_usd_micros
        + costs.cache_creation_usd_micros,
        "co": costs.output_usd_micros,
        "ti": ev.input_tokens,
        "to": ev.output_tokens + ev.reasoning_tokens,
        "tc": ev.cached_input_tokens,
        "r": 1,
        "e": 1 if ev.status == "error" else 0,
        "u": 0 if costs.priced else 1,
    }
    return {field: amount for field, amount in values.items() if amount}


def dedup_set_key(tenant: str, ts_ms: int) -> str:
    return keys.seen_key(tenant, str(bucket_start_ms(ts_ms, HOUR_S)))


class WindowStore:
    """Reads and writes the spend windows of every scope in Redis."""

    def __init__(
        self, redis: Redis, dedup_horizon_s: int, allowed_lateness_s: int | None = None
    ) -> None:
        self._redis = redis
        self._dedup_horizon_ms = dedup_horizon_s * 1000
        self._allowed_lateness_ms = (
            None if allowed_lateness_s is None else allowed_lateness_s * 1000
        )
        self._apply = redis.register_script(_APPLY_LUA)
        self._sum = redis.register_script(_SUM_LUA)

    async def apply_batch(self, batch: Sequence[PricedEvent], now_ms: int) -> ApplyResult:
        """Count every event of the batch that was not counted before, exactly once."""
        by_tenant: dict[str, dict[str, PricedEvent]] = defaultdict(dict)
        duplicates: list[PricedEvent] = []
        for item in batch:
            pending = by_tenant[item.event.tenant_id]
            if item.event.event_id in pending:
                duplicates.append(item)
            else:
                pending[item.event.event_id] = item
        applied: list[PricedEvent] = []
        todo = {tenant: list(items.values()) for tenant, items in by_tenant.items()}
        while todo:
            tenants = list(todo)
            pipe = self._redis.pipeline(transaction=False)
            for tenant in tenants:
                script_keys, args = self._script_call(tenant, todo[tenant], now_ms)
                await self._apply(keys=script_keys, args=args, client=pipe)
            replies = await pipe.execute()
            retry: dict[str, list[PricedEvent]] = {}
            for tenant, reply in zip(tenants, replies, strict=True):
                items = todo[tenant]
                if not reply:
                    applied.extend(items)
                    continue
                seen = {int(i) - 1 for i in reply}
                duplicates.extend(items[i] for i in seen)
                rest = [item for i, item in enumerate(items) if i not in seen]
                if rest:
                    retry[tenant] = rest
            todo = retry
        return ApplyResult(applied, duplicates, touched_entities(applied))

    def _script_call(
        self, tenant: str, items: Sequence[PricedEvent], now_ms: int
    ) -> tuple[list[str], list[str | int]]:
        seen_keys = [dedup_set_key(tenant, it.event.ts_ms) for it in items]
        expire_at = now_ms + self._dedup_horizon_ms
        args: list[str | int] = [len(items), expire_at, *(it.event.event_id for it in items)]
        sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        expiries: dict[str, int] = {}
        for it in items:
            fields = event_metrics(it)
            buckets = writable_buckets(it.event.ts_ms, now_ms, self._allowed_lateness_ms)
            for scope in WINDOW_SCOPES:
                entity = it.event.entity(scope)
                if entity is None:
                    continue
                owner = keys.GLOBAL_TENANT if scope is Scope.global_ else tenant
                for size_s, start_ms, expiry_ms in buckets:
                    key = keys.window_key(owner, scope, entity, size_s, start_ms)
                    expiries[key] = expiry_ms
                    target = sums[key]
                    for field, amount in fields.items():
                        target[field] += amount
        window_keys = list(sums)
        for key in window_keys:
            fields = sums[key]
            args.append(expiries[key])
            args.append(len(fields))
            for field, amount in fields.items():
                args.append(field)
                args.append(amount)
        return seen_keys + window_keys, args

    async def read_windows(
        self, requests: Sequence[tuple[str, Scope, str, str]], now_ms: int
    ) -> list[dict[str, float]]:
        """Metrics of each (tenant, scope, entity, window), summed inside Redis.

        One Lua call per tenant adds up the buckets server-side, so a batch that touches
        thousands of entities costs a few hundred commands, not one per bucket.
        """
        by_owner: dict[str, list[int]] = defaultdict(list)
        for index, (tenant, scope, _, _) in enumerate(requests):
            by_owner[keys.GLOBAL_TENANT if scope is Scope.global_ else tenant].append(index)
        pipe = self._redis.pipeline(transaction=False)
        owners = list(by_owner)
        for owner in owners:
            args: list[str | int] = [len(by_owner[owner])]
            for index in by_owner[owner]:
                _, scope, entity, window = requests[index]
                size_s, starts = window_buckets(window, now_ms)
                prefix = keys.window_key(owner, scope, entity, size_s, 0)[:-1]
                args.extend((prefix, size_s * 1000, starts[0], len(starts)))
            # The one declared key puts the call in the tenant's Redis Cluster slot.
            await self._sum(keys=[keys.seen_key(owner, "slot")], args=args, client=pipe)
        replies = await pipe.execute()
        out: list[dict[str, float]] = [{} for _ in requests]
        width = len(METRIC_FIELDS)
        for owner, reply in zip(owners, replies, strict=True):
            for n, index in enumerate(by_owner[owner]):
                out[index] = named_metrics(reply[n * width : (n + 1) * width])
        return out


def named_metrics(values: Sequence[int]) -> dict[str, float]:
    """Field sums in METRIC_FIELDS order -> metric names, money in USD.

    >>> named_metrics([1_750_000, 0, 0, 0, 0, 0, 3, 0, 0])["cost_usd"]
    1.75
    """
    return {
        metric: value / 1_000_000 if metric in MONEY_METRICS else value
        for metric, value in zip(METRIC_FIELDS, values, strict=True)
    }


def sum_buckets(buckets: Iterable[dict[bytes, bytes]]) -> dict[str, float]:
    """Sum bucket hashes into named metrics, money in USD.

    >>> sum_buckets([{b"c": b"1500000", b"r": b"2"}, {b"c": b"250000", b"r": b"1"}])["cost_usd"]
    1.75
    """
    totals = dict.fromkeys(METRIC_FIELDS.values(), 0)
    for bucket in buckets:
        for raw_field, raw_value in bucket.items():
            name = raw_field.decode()
            if name in totals:
                totals[name] += int(raw_value)
    out: dict[str, float] = {}
    for metric, field in METRIC_FIELDS.items():
        total = totals[field]
        out[metric] = total / 1_000_000 if metric in MONEY_METRICS else total
    return out


def touched_entities(items: Iterable[PricedEvent]) -> set[Touched]:
    out = set()
    for it in items:
        for scope in WINDOW_SCOPES:
            entity = it.event.entity(scope)
            if entity is not None:
                out.add(Touched(it.event.tenant_id, scope, entity))
    return out
