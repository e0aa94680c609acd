"""Redis sliding sums: apply a batch of priced events exactly once, read windows back.

Each bucket of each entity is one Redis string of packed big-endian signed 64-bit counters
(one per metric, in METRICS order). The Lua script reads it, adds the batch's vector and writes
it back with its expiry: two commands per bucket whatever the number of metrics, where a hash
would need one HINCRBY per metric (measured: a third less Redis time per event than BITFIELD
INCRBY plus PEXPIREAT). Lua numbers are doubles, so each counter is
exact up to 2**53: 9 billion dollars in micro-dollars, per bucket.

A batch is pre-aggregated in memory (one vector per entity and bucket), then each tenant's part
goes to Redis as one Lua call carrying a JSON payload: it first checks every event id against
the tenant's dedup sets and applies nothing if any was seen before (the caller drops those and
calls again). So the dedup marks and the increments land together or not at all, and a worker
killed between writing Redis and committing its Kafka offset re-reads the events, finds them
seen, and counts nothing twice.
"""

from __future__ import annotations

import operator
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import tzinfo

import orjson
from redis.asyncio import Redis

from detector import keys
from detector.pricing import Costs
from detector.schemas import Scope, UsageEvent
from detector.windows.buckets import (
    BUCKET_SIZES,
    DAY_S,
    HOUR_S,
    LATE_MIN_BUCKET_S,
    LOCAL_DAY,
    MINUTE_S,
    bucket_start_ms,
    local_day_start_ms,
    window_buckets,
    writable_buckets,
)
from detector.windows.reach import ReachStore

# Metrics in the order of their counters in a bucket. Money is in integer micro-dollars.
METRICS: tuple[str, ...] = (
    "cost_usd",
    "input_cost_usd",
    "output_cost_usd",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "requests",
    "errors",
    "unpriced_requests",
    # For events that carry cost_usd and whose model has a table price: what the gateway
    # billed and what the table says, so drift between the two can be reported.
    "billed_cost_usd",
    "table_cost_usd",
)
MONEY_METRICS = frozenset(
    {"cost_usd", "input_cost_usd", "output_cost_usd", "billed_cost_usd", "table_cost_usd"}
)
WIDTH = len(METRICS)
WINDOW_SCOPES: tuple[Scope, ...] = tuple(Scope)
# The scopes inside a tenant, each with the event field that names its entity.
NESTED_FIELDS: tuple[tuple[Scope, str], ...] = (
    (Scope.user, "user_id"),
    (Scope.feature, "feature"),
    (Scope.model, "model"),
    (Scope.api_key, "api_key_id"),
    (Scope.session, "session_id"),
)
_GLOBAL_PREFIX = f"det:win:{{t:{keys.GLOBAL_TENANT}}}:"  # key prefix of the global scope
_PACKED = struct.Struct(f">{WIDTH}q")
_SPAN_MS: dict[int | str, int] = {b.size_s: (b.size_s + b.retention_s) * 1000 for b in BUCKET_SIZES}
# A local day lasts 23 to 25 hours; its bucket is kept an hour longer than a UTC day's.
_SPAN_MS[LOCAL_DAY] = _SPAN_MS[DAY_S] + HOUR_S * 1000

Zones = Callable[[str], tzinfo | None]  # tenant -> its time zone, None for UTC

# Lua pieces shared by both scripts: the counters' layout and an exact integer formatter.
_LUA_FORMAT = "'>" + "i8" * WIDTH + "'"
_LUA_COMMON = f"""
local WIDTH = {WIDTH}
local FORMAT = {_LUA_FORMAT}
local function int(v) return string.format('%d', v) end
"""

# KEYS[1]: the tenant's dedup prefix (declares the tenant's cluster slot).
# ARGV[1]: JSON {"x": dedup horizon ms, "s": [[hour ms, [ids...]], ...],
#                "k": [bucket key, ...], "p": [bucket time to live in ms, as text, ...],
#                "z": [[rank key, ttl ms, [member, micro-dollars, ...]], ...],
#                "h": [[quality key, ttl ms, [field, increment, ...]], ...]}
# Lifetimes are relative to the caller's clock (wall time in the worker, event time in a
# backtest), so a replay of old events keeps its buckets as long as the live worker would.
# ARGV[2]: the deltas of those buckets, packed one after another in the bucket layout.
_APPLY_LUA = (
    _LUA_COMMON
    + """
local p = cjson.decode(ARGV[1])
local dups = {}
for _, group in ipairs(p.s) do
  local key = KEYS[1] .. int(group[1])
  local ids = group[2]
  for i = 1, #ids, 500 do
    local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
    local seen = redis.call('SMISMEMBER', key, unpack(chunk))
    for j = 1, #chunk do
      if seen[j] == 1 then dups[#dups + 1] = chunk[j] end
    end
  end
end
if #dups > 0 then return dups end
for _, group in ipairs(p.s) do
  local key = KEYS[1] .. int(group[1])
  local ids = group[2]
  for i = 1, #ids, 500 do
    redis.call('SADD', key, unpack(ids, i, math.min(i + 499, #ids)))
  end
  redis.call('PEXPIRE', key, int(p.x))
end
local deltas = ARGV[2]
local pos = 1
local expiries = p.p
for i, key in ipairs(p.k) do
  local values = {struct.unpack(FORMAT, deltas, pos)}
  pos = values[WIDTH + 1]
  local packed = redis.call('GET', key)
  if packed then
    if #packed < WIDTH * 8 then packed = packed .. string.rep('\\0', WIDTH * 8 - #packed) end
    local current = {struct.unpack(FORMAT, packed)}
    for f = 1, WIDTH do values[f] = values[f] + current[f] end
  end
  redis.call('SET', key, struct.pack(FORMAT, unpack(values, 1, WIDTH)), 'PX', expiries[i])
end
for _, group in ipairs(p.z) do
  local key, flat = group[1], group[3]
  for i = 1, #flat, 2 do redis.call('ZINCRBY', key, int(flat[i + 1]), flat[i]) end
  redis.call('PEXPIRE', key, int(group[2]))
end
for _, group in ipairs(p.h) do
  local key, flat = group[1], group[3]
  for i = 1, #flat, 2 do redis.call('HINCRBY', key, flat[i], int(flat[i + 1])) end
  redis.call('PEXPIRE', key, int(group[2]))
end
return dups
"""
)

# ARGV[1]: JSON [[bucket key, ...], ...], one list per requested window.
# Returns the WIDTH sums of each requested window, one after another.
_SUM_LUA = (
    _LUA_COMMON
    + """
local out = {}
local zeros = string.rep('\\0', WIDTH * 8)
for _, names in ipairs(cjson.decode(ARGV[1])) do
  local sums = {}
  for f = 1, WIDTH do sums[f] = 0 end
  for _, packed in ipairs(redis.call('MGET', unpack(names))) do
    if packed then
      -- A value shorter than the layout (written by an older layout) reads as zeros after it.
      if #packed < WIDTH * 8 then packed = packed .. string.sub(zeros, #packed + 1) end
      local values = {struct.unpack(FORMAT, packed)}
      for f = 1, WIDTH do sums[f] = sums[f] + values[f] end
    end
  end
  for f = 1, WIDTH do out[#out + 1] = sums[f] end
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


def event_vector(item: PricedEvent) -> list[int]:
    """The counters one event adds to every bucket it lands in, in METRICS order."""
    ev, costs = item.event, item.costs
    billed = table = 0
    if ev.cost_usd is not None and costs.computed_usd_micros is not None:
        billed, table = costs.total_usd_micros, costs.computed_usd_micros
    return [
        costs.total_usd_micros,
        costs.input_usd_micros + costs.cached_read_usd_micros + costs.cache_creation_usd_micros,
        costs.output_usd_micros,
        ev.input_tokens,
        ev.output_tokens + ev.reasoning_tokens,
        ev.cached_input_tokens,
        1,
        1 if ev.status == "error" else 0,
        0 if costs.priced else 1,
        billed,
        table,
    ]


def entity_prefix(tenant: str, scope: Scope, entity: str) -> str:
    """Key prefix of one entity's buckets (the bucket size and start follow).

    >>> entity_prefix("acme", Scope.user, "u1")
    'det:win:{t:acme}:user:u1:'
    """
    owner = keys.GLOBAL_TENANT if scope is Scope.global_ else tenant
    return keys.window_key(owner, scope.value, entity, 0, 0)[: -len("0:0")]


def dedup_prefix(tenant: str) -> str:
    """Prefix of the tenant's dedup sets; the hour of the event's timestamp follows."""
    return keys.seen_key(tenant, "")


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
        self.reach = ReachStore(redis)
        self._apply = redis.register_script(_APPLY_LUA)
        self._sum = redis.register_script(_SUM_LUA)

    async def apply_batch(
        self,
        batch: Sequence[PricedEvent],
        now_ms: int,
        series: Callable[[UsageEvent], list[str]] | None = None,
        zones: Zones | None = None,
    ) -> ApplyResult:
        """Count every event of the batch that was not counted before, exactly once.

        `series` names extra key prefixes an event also counts under (rules' filtered series).
        `zones` gives a tenant's time zone, if it has one: its entities also get day buckets
        that start at local midnight, for its calendar windows and budgets.
        """
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
                zone = zones(tenant) if zones is not None else None
                payload, deltas = self._payload(todo[tenant], now_ms, series, zone)
                await self._apply(keys=[dedup_prefix(tenant)], args=[payload, deltas], client=pipe)
            replies = await pipe.execute()
            retry: dict[str, list[PricedEvent]] = {}
            for tenant, reply in zip(tenants, replies, strict=True):
                items = todo[tenant]
                if not reply:
                    applied.extend(items)
                    continue
                seen = {r.decode() if isinstance(r, bytes) else str(r) for r in reply}
                duplicates.extend(it for it in items if it.event.event_id in seen)
                rest = [it for it in items if it.event.event_id not in seen]
                if rest:
                    retry[tenant] = rest
            todo = retry
        return ApplyResult(applied, duplicates, touched_entities(applied))

    def _payload(
        self,
        items: Sequence[PricedEvent],
        now_ms: int,
        series: Callable[[UsageEvent], list[str]] | None,
        zone: tzinfo | None = None,
    ) -> tuple[bytes, bytes]:
        """The Lua call's arguments: JSON (dedup groups by hour, bucket keys and expiries)
        and the buckets' summed vectors, packed.

        Events are summed per entity and minute first; only those sums are then spread over
        the longer buckets, so the shared entities (tenant, model, feature) cost one vector
        addition per event instead of one per bucket size.
        """
        by_hour: dict[int, list[str]] = defaultdict(list)
        # (entity prefix, minute start, late) -> summed vector
        minutes: dict[tuple[str, int, bool], list[int]] = {}
        late_before_ms = (
            now_ms - self._allowed_lateness_ms if self._allowed_lateness_ms is not None else None
        )
        rollups = _DayRollups(now_ms)
        for it in items:
            ev = it.event
            by_hour[bucket_start_ms(ev.ts_ms, HOUR_S)].append(ev.event_id)
            vector = event_vector(it)
            rollups.add(ev, vector[0])
            minute_ms = bucket_start_ms(ev.ts_ms, MINUTE_S)
            late = late_before_ms is not None and ev.ts_ms < late_before_ms
            prefixes = entity_prefixes(ev)
            if series is not None:
                prefixes += series(ev)
            for prefix in prefixes:
                slot = (prefix, minute_ms, late)
                total = minutes.get(slot)
                minutes[slot] = vector if total is None else _add(total, vector)
        sums: dict[tuple[str, int | str, int], list[int]] = {}
        # (minute start, late, local days too) -> the buckets such a minute's sum goes to
        spread: dict[tuple[int, bool, bool], list[tuple[int | str, int]]] = {}
        for (prefix, minute_ms, late), vector in minutes.items():
            zoned = zone is not None and not prefix.startswith(_GLOBAL_PREFIX)
            buckets = spread.get((minute_ms, late, zoned))
            if buckets is None:
                buckets = spread[(minute_ms, late, zoned)] = _spread(
                    minute_ms, late, zone if zoned else None, now_ms
                )
            for size, start_ms in buckets:
                bucket = (prefix, size, start_ms)
                total = sums.get(bucket)
                sums[bucket] = vector if total is None else _add(total, vector)
        bucket_keys, expiries, deltas = [], [], bytearray()
        for (prefix, size, start_ms), vector in sums.items():
            bucket_keys.append(f"{prefix}{size}:{start_ms}")
            expiries.append(str(start_ms + _SPAN_MS[size] - now_ms))
            deltas += _PACKED.pack(*vector)
        payload = {
            "x": self._dedup_horizon_ms,
            "s": [[hour, ids] for hour, ids in by_hour.items()],
            "k": bucket_keys,
            "p": expiries,
            "z": rollups.ranks(),
            "h": rollups.quality(),
        }
        return orjson.dumps(payload), bytes(deltas)

    async def read_windows(
        self,
        requests: Sequence[tuple[str, Scope, str, str]],
        now_ms: int,
        zones: Zones | None = None,
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
            asks = []
            for index in by_owner[owner]:
                tenant, scope, entity, window = requests[index]
                zone = zones(tenant) if zones is not None and owner != keys.GLOBAL_TENANT else None
                size_s, starts = window_buckets(window, now_ms, zone)
                series = window.partition("#")[2]
                base = series_prefix(owner, series, entity) if series else None
                prefix = f"{base or entity_prefix(tenant, scope, entity)}{size_s}:"
                asks.append([f"{prefix}{start}" for start in starts])
            # The one declared key puts the call in the owner's Redis Cluster slot.
            await self._sum(keys=[dedup_prefix(owner)], args=[orjson.dumps(asks)], client=pipe)
        replies = await pipe.execute()
        out: list[dict[str, float]] = [{} for _ in requests]
        for owner, reply in zip(owners, replies, strict=True):
            for n, index in enumerate(by_owner[owner]):
                out[index] = named_metrics(reply[n * WIDTH : (n + 1) * WIDTH])
        return out


_DAY_SPAN_MS = _SPAN_MS[DAY_S]
_RANKED_SCOPES = ("user", "feature", "model", "api_key", "session")


class _DayRollups:
    """One batch's additions to the daily roll-ups the reports read: per tenant and UTC day,
    the cost of every entity of each scope (a sorted set, so top spenders and exact counts of
    active entities are one read), the cost of each tenant, and the quality signal per model.
    """

    def __init__(self, now_ms: int) -> None:
        self._now_ms = now_ms
        self._ranks: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._quality: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._ttl: dict[str, int] = {}

    def add(self, ev: UsageEvent, cost_micros: int) -> None:
        day_ms = bucket_start_ms(ev.ts_ms, DAY_S)
        ttl = day_ms + _DAY_SPAN_MS - self._now_ms
        if ttl <= 0:
            return  # older than the day buckets' retention: the roll-ups are gone too
        tenant = ev.tenant_id
        ranks = self._ranks
        key = keys.rank_key(keys.GLOBAL_TENANT, "tenant", day_ms)
        self._ttl[key] = ttl
        ranks[key][tenant] += cost_micros
        for scope, field in NESTED_FIELDS:
            entity = getattr(ev, field)
            if entity is not None:
                key = keys.rank_key(tenant, scope.value, day_ms)
                self._ttl[key] = ttl
                ranks[key][entity] += cost_micros
        quality = quality_signal(ev.tags.get("quality"))
        if quality is not None:
            key = keys.quality_key(tenant, day_ms)
            self._ttl[key] = ttl
            fields = self._quality[key]
            fields[f"{ev.model}|n"] += 1
            fields[f"{ev.model}|q"] += quality
            fields[f"{ev.model}|c"] += cost_micros

    def ranks(self) -> list[list[object]]:
        return [_flat_group(key, self._ttl[key], members) for key, members in self._ranks.items()]

    def quality(self) -> list[list[object]]:
        return [_flat_group(key, self._ttl[key], fields) for key, fields in self._quality.items()]


def _flat_group(key: str, ttl_ms: int, values: dict[str, int]) -> list[object]:
    flat: list[object] = []
    for name, amount in values.items():
        flat += (name, amount)
    return [key, ttl_ms, flat]


def quality_signal(text: str | None) -> int | None:
    """An event's `tags.quality` in millionths, or None when absent or not a number in [0, 1].

    >>> quality_signal("0.75"), quality_signal("1"), quality_signal("1.5"), quality_signal("nan")
    (750000, 1000000, None, None)
    """
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        return None
    return round(value * 1_000_000)


def series_prefix(tenant: str, series: str, entity: str) -> str:
    """Key prefix of an entity's buckets in a rule's filtered series.

    >>> series_prefix("acme", "r.chat", "acme")
    'det:win:{t:acme}:r.chat:acme:'
    """
    return keys.window_key(tenant, series, entity, 0, 0)[: -len("0:0")]


def entity_prefixes(event: UsageEvent) -> list[str]:
    """Key prefixes of every entity the event belongs to, one per scope it names."""
    tenant = event.tenant_id
    tag = f"det:win:{{t:{tenant}}}:"
    out = [f"{_GLOBAL_PREFIX}global:all:", f"{tag}tenant:{tenant}:"]
    for scope, field in NESTED_FIELDS:
        entity = getattr(event, field)
        if entity is not None:
            out.append(f"{tag}{scope.value}:{entity}:")
    return out


def _add(a: list[int], b: list[int]) -> list[int]:
    return list(map(operator.add, a, b))


def _spread(
    minute_ms: int, late: bool, zone: tzinfo | None, now_ms: int
) -> list[tuple[int | str, int]]:
    """(size, start) of every bucket a minute's sum is added to: each bucket size still kept
    (a late minute skips the short ones), and the local day for a zoned tenant's entities.

    A bucket start depends only on the minute: every size is a multiple of 60 s.
    """
    out: list[tuple[int | str, int]] = [
        (size_s, start_ms)
        for size_s, start_ms, _ in writable_buckets(minute_ms, now_ms, None)
        if not (late and size_s < LATE_MIN_BUCKET_S)  # writable_buckets' lateness rule
    ]
    if zone is not None:
        day_ms = local_day_start_ms(minute_ms, zone)
        if day_ms + _SPAN_MS[LOCAL_DAY] > now_ms:
            out.append((LOCAL_DAY, day_ms))
    return out


def named_metrics(values: Sequence[int]) -> dict[str, float]:
    """Counter sums in METRICS order -> metric names, money in USD.

    >>> named_metrics([1_750_000, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0])["cost_usd"]
    1.75
    """
    return {
        metric: value / 1_000_000 if metric in MONEY_METRICS else value
        for metric, value in zip(METRICS, values, strict=True)
    }


def unpack_bucket(packed: bytes) -> list[int]:
    """Counters of one stored bucket (a short value means the trailing counters are zero).

    >>> unpack_bucket(bytes(7) + b"\\x05")
    [5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    """
    padded = packed.ljust(_PACKED.size, b"\x00")
    return list(_PACKED.unpack(padded[: _PACKED.size]))


def touched_entities(items: Iterable[PricedEvent]) -> set[Touched]:
    # Deduplicated as plain tuples first: a frozen dataclass hashes in Python, a tuple in C.
    seen: set[tuple[str, Scope, str]] = set()
    add = seen.add
    glob, tenant_scope = Scope.global_, Scope.tenant
    for it in items:
        ev = it.event
        tenant = ev.tenant_id
        add((tenant, glob, "all"))
        add((tenant, tenant_scope, tenant))
        for scope, field in NESTED_FIELDS:
            entity = getattr(ev, field)
            if entity is not None:
                add((tenant, scope, entity))
    return {Touched(*t) for t in seen}
