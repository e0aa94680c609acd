"""Redis sliding sums: apply a batch of priced events exactly once, read windows back.

A bucket holds an entity's counters packed as big-endian signed 64-bit integers (one per
metric, in METRICS order). One time bucket of a tenant (say, the minute of tenant acme that
starts at 12:03) is one Redis hash holding every entity counted in it: field `tenant` for the
tenant itself, `user|u1`, `model|gpt-4o`, ... for the entities of the nested scopes, and
`<series>` or `<series>|<entity>` for rules' filtered series; value = its counters. The Lua
script reads all of a batch's fields of one hash with one HMGET, adds the batch's vectors and
writes them back with one HSET, and the hash expires as a whole when the bucket's retention
ends, so a tenant's call costs three commands per bucket whatever the number of scopes
(measured: a hash per scope and bucket, with keys for the tenant's own buckets, cost about
twice the Redis time). The global scope lives in its own slot (see the outboxes below); its
buckets are plain keys. Lua numbers are doubles, so each counter is exact up to 2**53: 9
billion dollars in micro-dollars, per bucket.

A batch is pre-aggregated in memory (one vector per entity and bucket), then each tenant's part
goes to Redis as one Lua call carrying a JSON payload: it first checks every event id against
the tenant's dedup sets and applies nothing if any was seen before (the caller drops those and
calls again). So the dedup marks and the increments land together or not at all, and a worker
killed between writing Redis and committing its Kafka offset re-reads the events, finds them
seen, and counts nothing twice.
"""

from __future__ import annotations

import dataclasses
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from functools import lru_cache
from typing import Any, cast

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from detector import keys
from detector.pricing import Costs
from detector.redis_client import RedisClient
from detector.schemas import Scope, UsageEvent
from detector.windows.buckets import (
    BUCKET_SIZES,
    DAY_S,
    HOUR_S,
    LATE_MIN_BUCKET_S,
    LOCAL_DAY,
    MAX_RETENTION_S,
    MINUTE_S,
    local_day_start_ms,
    window_buckets,
    writable_buckets,
)

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
# API keys' distinct users and tenants: HyperLogLogs per hour (about 0.8% standard error), kept
# longer than any window a distinct count is asked for.
HLL_KEEP_S = 2 * 86400
# Events of one tenant per Lua call: about 30 ms of Redis time at most.
MAX_EVENTS_PER_CALL = 1000
WINDOW_SCOPES: tuple[Scope, ...] = tuple(Scope)
# The scopes inside a tenant, each with the event field that names its entity.
NESTED_FIELDS: tuple[tuple[Scope, str], ...] = (
    (Scope.user, "user_id"),
    (Scope.feature, "feature"),
    (Scope.model, "model"),
    (Scope.api_key, "api_key_id"),
    (Scope.session, "session_id"),
)
# Where an entity's buckets live: (bucket group, field). The group is the key prefix of the
# buckets, whose size and start follow it in the key. Inside a tenant every bucket is a hash
# shared by all its entities and the field names the entity (see window_slot); in the global
# slot (the global scope, global rules' filtered series) a bucket is a key of its own and the
# field is None.
Slot = tuple[str, str | None]
SINGLE_SCOPES = frozenset({Scope.global_, Scope.tenant})
_GLOBAL_GROUP = keys.window_hash_key(keys.GLOBAL_TENANT, Scope.global_.value, "", "")[:-1]
TENANT_FIELD = "tenant"  # the tenant's own counters in its bucket hashes
_GLOBAL_SLOT: Slot = (_GLOBAL_GROUP, None)
_GLOBAL_TAG = f"{{t:{keys.GLOBAL_TENANT}}}"  # the hash tag of the global slot
_PACKED = struct.Struct(f">{WIDTH}q")
_MINUTE_MS, _HOUR_MS = MINUTE_S * 1000, HOUR_S * 1000
_SPAN_MS: dict[int | str, int] = {b.size_s: (b.size_s + b.retention_s) * 1000 for b in BUCKET_SIZES}
# A local day lasts 23 to 25 hours; its bucket is kept an hour longer than a UTC day's.
_SPAN_MS[LOCAL_DAY] = _SPAN_MS[DAY_S] + HOUR_S * 1000

Zones = Callable[[str], tzinfo | None]  # tenant -> its time zone, None for UTC

# Lua pieces shared by both scripts: the counters' layout and an exact integer formatter.
_LUA_FORMAT = "'>" + "i8" * WIDTH + "'"
_LUA_COMMON = f"""
local WIDTH = {WIDTH}
local FORMAT = {_LUA_FORMAT}
local CHUNK = 500  -- arguments per command: Lua's unpack() has a limit of a few thousand
local function int(v) return string.format('%d', v) end
"""

# KEYS[1]: the tenant's dedup prefix (declares the tenant's cluster slot).
# ARGV[1]: JSON {"x": dedup horizon ms, "s": [[hour ms, [ids...]], ...],
#                "g": [[bucket hash key, time to live in ms, [field, ...]], ...],
#                "z": [[rank key, ttl ms, [member, micro-dollars, ...]], ...],
#                "h": [[quality key, ttl ms, [field, increment, ...]], ...],
#                "u": [[distinct-count key, ttl s, [member, ...]], ...],
#                "f": [first-seen key, ...], "fv": first-seen value, "ft": its ttl in s,
#                "c": [[distinct-count key, ...], ...] counted after the additions,
#                "r": hold index prefix, or "" when no reservation can be open,
#                "o": global outbox key, "q": its sequence key, "ot": its ttl ms,
#                "od": sequence number up to which the outbox was forwarded,
#                "gr": this call's contribution to the global scope (JSON text)}
# Lifetimes are relative to the caller's clock (wall time in the worker, event time in a
# backtest), so a replay of old events keeps its buckets as long as the live worker would.
# ARGV[2]: the deltas, packed one after another in the bucket layout, the hashes' fields in
# order. A hash gets its expiry when a call creates it: every writer sets the same one (the
# bucket's end plus its retention), so a hash that already held a field keeps the one it has.
# With "r", each counted event releases the budget holds its reservation (same id) made.
# Returns {event ids seen before (nothing was applied if any), previous first-seen values,
#          distinct counts, the outbox's records not yet forwarded}.
_APPLY_LUA = (
    _LUA_COMMON
    + """
local p = cjson.decode(ARGV[1])
-- The global outbox, less the records already forwarded (their sequence <= od).
local function outbox()
  while true do
    local head = redis.call('LINDEX', p.o, 0)
    if not head or tonumber(string.match(head, '^(%d+)|')) > p.od then break end
    redis.call('LPOP', p.o)
  end
  return redis.call('LRANGE', p.o, 0, -1)
end
local dups = {}
for _, group in ipairs(p.s) do
  local key = KEYS[1] .. int(group[1])
  local ids = group[2]
  for i = 1, #ids, CHUNK do
    local chunk = {unpack(ids, i, math.min(i + CHUNK - 1, #ids))}
    local seen = redis.call('SMISMEMBER', key, unpack(chunk))
    for j = 1, #chunk do
      if seen[j] == 1 then dups[#dups + 1] = chunk[j] end
    end
  end
end
if #dups > 0 then return {dups, {}, {}, outbox()} end
for _, group in ipairs(p.s) do
  local key = KEYS[1] .. int(group[1])
  local ids = group[2]
  for i = 1, #ids, CHUNK do
    redis.call('SADD', key, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
  end
  redis.call('PEXPIRE', key, int(p.x))
end
local deltas = ARGV[2]
local pos = 1
local size = WIDTH * 8
-- The delta at pos added to a stored value; a new bucket takes the delta's bytes as they are.
local function added(packed, pos)
  if not packed then return string.sub(deltas, pos, pos + size - 1) end
  if #packed < size then packed = packed .. string.rep('\\0', size - #packed) end
  local values = {struct.unpack(FORMAT, deltas, pos)}
  local now = {struct.unpack(FORMAT, packed)}
  for f = 1, WIDTH do values[f] = values[f] + now[f] end
  return struct.pack(FORMAT, unpack(values, 1, WIDTH))
end
for _, group in ipairs(p.g) do
  local key, fields = group[1], group[3]
  local existed = false
  for i = 1, #fields, CHUNK do
    local last = math.min(i + CHUNK - 1, #fields)
    local current = redis.call('HMGET', key, unpack(fields, i, last))
    local out = {}
    for j = i, last do
      local packed = current[j - i + 1]
      if packed then existed = true end
      out[#out + 1] = fields[j]
      out[#out + 1] = added(packed, pos)
      pos = pos + size
    end
    redis.call('HSET', key, unpack(out))
  end
  if not existed then redis.call('PEXPIRE', key, int(group[2])) end
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
for _, group in ipairs(p.u) do
  local key, members = group[1], group[3]
  for i = 1, #members, CHUNK do
    redis.call('PFADD', key, unpack(members, i, math.min(i + CHUNK - 1, #members)))
  end
  redis.call('EXPIRE', key, int(group[2]))
end
local first = {}
for i, key in ipairs(p.f) do
  first[i] = redis.call('SET', key, int(p.fv), 'NX', 'GET', 'EX', int(p.ft))
end
local counts = {}
for i, names in ipairs(p.c) do counts[i] = redis.call('PFCOUNT', unpack(names)) end
if p.r ~= '' then
  -- Most events have no reservation: one EXISTS per chunk of ids tells, instead of two
  -- commands per event.
  for _, group in ipairs(p.s) do
    local ids = group[2]
    for i = 1, #ids, CHUNK do
      local last = math.min(i + CHUNK - 1, #ids)
      local names = {}
      for j = i, last do names[#names + 1] = p.r .. ids[j] end
      if redis.call('EXISTS', unpack(names)) > 0 then
        for j = i, last do
          local index = names[j - i + 1]
          for _, hold in ipairs(redis.call('LRANGE', index, 0, -1)) do
            redis.call('HDEL', hold, ids[j])
          end
          redis.call('DEL', index)
        end
      end
    end
  end
end
local seq = redis.call('INCR', p.q)
redis.call('RPUSH', p.o, int(seq) .. '|' .. p.gr)
redis.call('PEXPIRE', p.o, int(p.ot))
return {dups, first, counts, outbox()}
"""
)

# ARGV[1]: JSON [[key prefix, [bucket start, ...], entity], ...], one per requested window: the
# bucket of each start is the key prefix .. start, a hash whose field is the entity, or (for the
# tenant and global scopes, without an entity) a key of its own.
# Returns the WIDTH sums of each requested window, one after another.
_SUM_LUA = (
    _LUA_COMMON
    + """
local out = {}
local zeros = string.rep('\\0', WIDTH * 8)
for _, ask in ipairs(cjson.decode(ARGV[1])) do
  local prefix, starts, entity = ask[1], ask[2], ask[3]
  local values
  if entity then
    values = {}
    for i, start in ipairs(starts) do
      values[i] = redis.call('HGET', prefix .. int(start), entity)
    end
  else
    local names = {}
    for i, start in ipairs(starts) do names[i] = prefix .. int(start) end
    values = redis.call('MGET', unpack(names))
  end
  local sums = {}
  for f = 1, WIDTH do sums[f] = 0 end
  for _, packed in ipairs(values) do
    if packed then
      -- A value shorter than the layout (written by an older layout) reads as zeros after it.
      if #packed < WIDTH * 8 then packed = packed .. string.sub(zeros, #packed + 1) end
      local counters = {struct.unpack(FORMAT, packed)}
      for f = 1, WIDTH do sums[f] = sums[f] + counters[f] end
    end
  end
  for f = 1, WIDTH do out[#out + 1] = sums[f] end
end
return out
"""
)


# The global scope's keys live in their own Redis Cluster slot, so a tenant's call cannot write
# them. It appends its contribution to the tenant's global outbox instead (in the same atomic
# write as everything else, numbered by a per-tenant sequence), and this script, in the global
# slot, adds each contribution whose number is above the last one it added for that tenant:
# once, whoever forwards it and however often.
# KEYS[1]: the hash of the last sequence number added per tenant; KEYS[2]: the set of tenants
# forwarded from (for the worker's sweep).
# ARGV[1]: JSON [[tenant, seq, contribution JSON], ...], each tenant's in increasing seq.
#   contribution: {"k": [[bucket key, ttl ms, [counter, ...]], ...],
#                  "z": [[rank key, ttl ms, [member, micro-dollars, ...]], ...],
#                  "u": [[distinct-count key, ttl s, [member, ...]], ...]}
# ARGV[2]: JSON [[distinct-count key, ...], ...] to count once everything is added.
# Returns {contributions added, distinct counts}.
_FORWARD_LUA = (
    _LUA_COMMON
    + """
local added = 0
local size = WIDTH * 8
-- Contributions to the same bucket (every tenant's to the global minute, hour, ...) are summed
-- here first and written once each at the end: one GET and SET per bucket, not per tenant.
local sums, ttls, order = {}, {}, {}
for _, r in ipairs(cjson.decode(ARGV[1])) do
  local tenant, seq = r[1], r[2]
  redis.call('SADD', KEYS[2], tenant)
  if seq > tonumber(redis.call('HGET', KEYS[1], tenant) or '0') then
    redis.call('HSET', KEYS[1], tenant, int(seq))
    local c = cjson.decode(r[3])
    for _, b in ipairs(c.k) do
      local key, values = b[1], b[3]
      local acc = sums[key]
      if not acc then
        acc = {}
        for f = 1, WIDTH do acc[f] = 0 end
        sums[key] = acc
        order[#order + 1] = key
      end
      for f = 1, WIDTH do acc[f] = acc[f] + values[f] end
      ttls[key] = b[2]  -- as when written one by one: the last contribution's lifetime
    end
    for _, group in ipairs(c.z) do
      local key, flat = group[1], group[3]
      for i = 1, #flat, 2 do redis.call('ZINCRBY', key, int(flat[i + 1]), flat[i]) end
      redis.call('PEXPIRE', key, int(group[2]))
    end
    for _, group in ipairs(c.u) do
      local key, members = group[1], group[3]
      for i = 1, #members, CHUNK do
        redis.call('PFADD', key, unpack(members, i, math.min(i + CHUNK - 1, #members)))
      end
      redis.call('EXPIRE', key, int(group[2]))
    end
    added = added + 1
  end
end
for _, key in ipairs(order) do
  local acc = sums[key]
  local packed = redis.call('GET', key)
  if packed then
    if #packed < size then packed = packed .. string.rep('\\0', size - #packed) end
    local now = {struct.unpack(FORMAT, packed)}
    for f = 1, WIDTH do acc[f] = acc[f] + now[f] end
  end
  redis.call('SET', key, struct.pack(FORMAT, unpack(acc, 1, WIDTH)), 'PX', int(ttls[key]))
end
local counts = {}
for i, names in ipairs(cjson.decode(ARGV[2])) do
  counts[i] = redis.call('PFCOUNT', unpack(names))
end
return {added, counts}
"""
)

# KEYS[1]: a tenant's global outbox; ARGV[1]: the sequence number forwarded up to.
_TRIM_OUTBOX_LUA = """
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head or tonumber(string.match(head, '^(%d+)|')) > tonumber(ARGV[1]) then break end
  redis.call('LPOP', KEYS[1])
end
return redis.call('LLEN', KEYS[1])
"""


@dataclass(frozen=True, slots=True)
class PricedEvent:
    event: UsageEvent
    costs: Costs
    source: int = 0  # the Kafka partition it came from (its event time is followed per source)


# An entity whose windows changed in a batch: (tenant, scope, entity), the rules' target.
Touched = tuple[str, Scope, str]


@dataclass(slots=True)
class ApplyResult:
    applied: list[PricedEvent]
    duplicates: list[PricedEvent]
    touched: set[Touched]
    # When each entity of ReachNeeds.first_seen's scopes was first seen (epoch ms).
    first_seen: dict[tuple[str, Scope, str], int] = dataclasses.field(default_factory=dict)
    # (tenant, API key) -> (distinct users, distinct tenants) over ReachNeeds.key_window_s.
    key_reach: dict[tuple[str, str], tuple[int, int]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReachNeeds:
    """What the abuse patterns need recorded in the same atomic write as a batch's counts."""

    first_seen: frozenset[Scope] = frozenset()  # scopes whose entities' first-seen time is kept
    key_users: bool = False  # distinct users of each API key per hour
    key_tenants: bool = False  # distinct tenants of each API key id per hour
    key_window_s: int = 0  # distinct counts are read back over this much (whole hours)


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


@lru_cache(maxsize=65_536)
def tenant_group(tenant: str) -> str:
    """Key prefix of a tenant's bucket hashes (the bucket size and start follow).

    >>> tenant_group("acme")
    'det:win:{t:acme}:'
    """
    return keys.window_bucket_key(tenant, "", "")[:-1]


def window_slot(tenant: str, scope: Scope, entity: str) -> Slot:
    """Where the buckets of one entity of a scope live.

    >>> window_slot("acme", Scope.user, "u1")
    ('det:win:{t:acme}:', 'user|u1')
    >>> window_slot("acme", Scope.tenant, "acme")
    ('det:win:{t:acme}:', 'tenant')
    >>> window_slot("acme", Scope.global_, "all")
    ('det:win:{t:_global}:global:', None)
    """
    if scope is Scope.global_:
        return _GLOBAL_SLOT
    if scope is Scope.tenant:
        return tenant_group(tenant), TENANT_FIELD
    return tenant_group(tenant), f"{scope.value}|{entity}"


def dedup_prefix(tenant: str) -> str:
    """Prefix of the tenant's dedup sets; the hour of the event's timestamp follows."""
    return keys.seen_key(tenant, "")


class WindowStore:
    """Reads and writes the spend windows of every scope in Redis: one server, or a Redis
    Cluster (every call stays in one slot: a tenant's, or the global one)."""

    def __init__(
        self,
        redis: RedisClient,
        dedup_horizon_s: int,
        allowed_lateness_s: int | None = None,
    ) -> None:
        self._redis = redis
        self._dedup_horizon_ms = dedup_horizon_s * 1000
        self._allowed_lateness_ms = (
            None if allowed_lateness_s is None else allowed_lateness_s * 1000
        )
        self._apply = redis.register_script(_APPLY_LUA)
        self._sum = redis.register_script(_SUM_LUA)
        self._forward_script = redis.register_script(_FORWARD_LUA)
        self._trim = redis.register_script(_TRIM_OUTBOX_LUA)
        # A cluster pipeline does not load scripts by itself as a one-server pipeline does:
        # they are loaded on every primary before the first pipeline, and again after a
        # NOSCRIPT (a node restarted or failed over).
        self._cluster = isinstance(redis, RedisCluster)
        self._scripts_loaded = False
        # tenant -> the sequence number its global outbox is known forwarded up to
        self._forwarded: dict[str, int] = {}

    async def apply_batch(
        self,
        batch: Sequence[PricedEvent],
        now_ms: int,
        series: Callable[[UsageEvent], list[Slot]] | None = None,
        zones: Zones | None = None,
        reach: ReachNeeds | None = None,
        settle_holds: bool = False,
    ) -> ApplyResult:
        """Count every event of the batch that was not counted before, exactly once.

        `series` names extra slots an event also counts under (rules' filtered series).
        `zones` gives a tenant's time zone, if it has one: its entities also get day buckets
        that start at local midnight, for its calendar windows and budgets. `reach` says what
        the abuse patterns need recorded with the counts (first-seen times, distinct counts).
        With `settle_holds`, each counted event releases the budget holds its reservation (same
        request id) made, in the same atomic call.
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
        first_seen: dict[tuple[str, Scope, str], int] = {}
        key_reach: dict[tuple[str, str], tuple[int, int]] = {}
        # One Lua call per tenant and chunk: a big tenant's share of a big batch is cut so
        # that no call holds Redis for long (each call is atomic on its own).
        todo = [
            (tenant, chunk)
            for tenant, items in by_tenant.items()
            for chunk in _chunks(list(items.values()), MAX_EVENTS_PER_CALL)
        ]
        outboxes: dict[str, list[bytes]] = {}  # tenant -> its global outbox after its last call
        done: list[tuple[str, _Asked, list[int]]] = []  # (tenant, asked, user counts)
        while todo:
            pipe = await self._pipeline()
            asked: list[_Asked] = []
            for tenant, items in todo:
                zone = zones(tenant) if zones is not None else None
                holds = keys.hold_index_key(tenant, "") if settle_holds else ""
                payload, deltas, ask = self._payload(items, now_ms, series, zone, reach, holds)
                asked.append(ask)
                await self._apply(keys=[dedup_prefix(tenant)], args=[payload, deltas], client=pipe)
            replies = await self._execute(pipe)
            retry: list[tuple[str, list[PricedEvent]]] = []
            for (tenant, items), (dups, previous, counts, outbox), ask in zip(
                todo, replies, asked, strict=True
            ):
                outboxes[tenant] = outbox
                if not dups:
                    applied.extend(items)
                    for target, before in zip(ask.firsts, previous, strict=True):
                        first_seen.setdefault(target, int(before) if before else ask.first_value)
                    done.append((tenant, ask, counts))
                    continue
                seen = {r.decode() if isinstance(r, bytes) else str(r) for r in dups}
                duplicates.extend(it for it in items if it.event.event_id in seen)
                rest = [it for it in items if it.event.event_id not in seen]
                if rest:
                    retry.append((tenant, rest))
            todo = retry
        # The global scope's share, from every tenant's outbox (older records left by a worker
        # that stopped before forwarding them included), and the API keys' tenant counts.
        tenant_asks = [names for _, ask, _ in done for names in ask.tenant_counts]
        tenant_counts = iter(await self._forward(outboxes, tenant_asks))
        for tenant, ask, counts in done:
            key_reach.update(ask.reach(tenant, counts, tenant_counts))
        return ApplyResult(applied, duplicates, touched_entities(applied), first_seen, key_reach)

    async def _forward(
        self, outboxes: dict[str, list[bytes]], count_asks: list[list[str]]
    ) -> list[int]:
        """Add the outboxes' records to the global scope (each once), then count count_asks."""
        records: list[list[object]] = []
        newest: dict[str, int] = {}
        for tenant, outbox in outboxes.items():
            for raw in outbox:
                seq_text, _, contribution = raw.partition(b"|")
                seq = int(seq_text)
                records.append([tenant, seq, contribution.decode()])
                newest[tenant] = max(newest.get(tenant, 0), seq)
        if not records and not count_asks:
            return []
        added, counts = await self._forward_script(
            keys=[keys.global_forwarded_key(), keys.global_tenants_key()],
            args=[orjson.dumps(records), orjson.dumps(count_asks)],
        )
        self._forwarded.update(newest)
        return [int(c) for c in counts]

    async def forward_pending(self, full_scan: bool = False) -> int:
        """Forward the tenants' global outboxes (records a stopped worker left behind, for
        tenants that sent nothing since), then trim them; returns the records seen.

        By default only the tenants forwarded from before are looked at (one set, no scan);
        `full_scan` also finds a tenant whose very first share was never forwarded, by scanning
        the keyspace (the worker does that once, at start).
        """
        if full_scan:
            tenants = []
            async for key in self._redis.scan_iter(match=keys.global_outbox_key("*"), count=1000):
                name = key.decode() if isinstance(key, bytes) else str(key)
                if not name.endswith(":seq"):
                    tenants.append(name[name.index("{t:") + 3 : name.rindex("}")])
        else:
            members = await self._redis.smembers(keys.global_tenants_key())
            tenants = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
        seen = 0
        for i in range(0, len(tenants), 500):
            chunk = tenants[i : i + 500]
            pipe = await self._pipeline()
            for tenant in chunk:
                pipe.lrange(keys.global_outbox_key(tenant), 0, -1)
            outboxes = {
                tenant: [v if isinstance(v, bytes) else str(v).encode() for v in found]
                for tenant, found in zip(chunk, await self._execute(pipe), strict=True)
                if found
            }
            if not outboxes:
                continue
            seen += sum(len(found) for found in outboxes.values())
            await self._forward(outboxes, [])
            pipe = await self._pipeline()
            for tenant in outboxes:
                await self._trim(
                    keys=[keys.global_outbox_key(tenant)],
                    args=[self._forwarded[tenant]],
                    client=pipe,
                )
            await self._execute(pipe)
        return seen

    async def _pipeline(self) -> Any:
        """A pipeline without a transaction (one server's or a cluster's)."""
        if self._cluster and not self._scripts_loaded:
            for script in (self._apply, self._sum, self._forward_script, self._trim):
                await self._redis.script_load(script.script)
            self._scripts_loaded = True
        return self._redis.pipeline(transaction=False)

    async def _execute(self, pipe: Any) -> list[Any]:
        # A pipeline that runs scripts checks them on a connection of its own before its try
        # block; cancelled or failed there, it kept that connection out of the pool for good.
        # reset() gives it back (not `async with`: entering a cluster pipeline's block
        # re-initialises it, which drops the commands queued before).
        try:
            return cast(list[Any], await pipe.execute())
        except NoScriptError:
            self._scripts_loaded = False  # the caller's retry loads them again
            raise
        finally:
            await pipe.reset()

    def _payload(
        self,
        items: Sequence[PricedEvent],
        now_ms: int,
        series: Callable[[UsageEvent], list[Slot]] | None,
        zone: tzinfo | None = None,
        reach: ReachNeeds | None = None,
        holds: str = "",
    ) -> tuple[bytes, bytes, _Asked]:
        """One tenant's Lua call: its arguments (JSON with the dedup groups by hour, the bucket
        keys and hashes with their expiries, roll-ups and reach; the summed vectors, packed in
        the same order), and what it asks back (first-seen times, distinct counts).
        `holds` is the hold index prefix when counted events settle reservations.

        Events are summed per entity and minute first; only those sums are then spread over
        the longer buckets, so the shared entities (tenant, model, feature) cost one vector
        addition per event instead of one per bucket size. Vectors are summed as lanes of one
        integer (see _lanes): one addition each, and their bytes are the packed bucket layout.
        """
        by_hour: dict[int, list[str]] = defaultdict(list)
        # (minute start, late) -> slot -> summed vector, as lanes
        # (minute start, late) -> bucket group -> field -> summed lanes
        minutes: dict[tuple[int, bool], dict[str, dict[str | None, int]]] = {}
        late_before_ms = (
            now_ms - self._allowed_lateness_ms if self._allowed_lateness_ms is not None else -1
        )
        rollups = _DayRollups(now_ms)
        newest_ms = 0
        for it in items:
            ev = it.event
            ts_ms = ev.ts_ms
            if ts_ms > newest_ms:
                newest_ms = ts_ms
            by_hour[ts_ms - ts_ms % _HOUR_MS].append(ev.event_id)
            values = event_vector(it)
            rollups.add(ev, values[0])
            vector = _lanes(values)
            when = (ts_ms - ts_ms % _MINUTE_MS, ts_ms < late_before_ms)
            groups = minutes.get(when)
            if groups is None:
                groups = minutes[when] = {}
            slots = entity_slots(ev)
            if series is not None:
                slots += series(ev)
            for group, field in slots:
                sums = groups.get(group)
                if sums is None:
                    sums = groups[group] = {}
                total = sums.get(field)
                sums[field] = vector if total is None else total + vector
        # (size, start) -> bucket group -> field (None: a global key) -> summed lanes. A bucket
        # fed by one minute shares that minute's sums (most batches span a minute or two); it
        # gets a copy of its own only when a second minute is added to it.
        buckets: dict[tuple[int | str, int], dict[str, dict[str | None, int]]] = {}
        owned: set[tuple[int | str, int, str]] = set()
        for (minute_ms, late), groups in minutes.items():
            for size, start_ms in _spread(minute_ms, late, zone, now_ms):
                bucket = buckets.get((size, start_ms))
                if bucket is None:
                    bucket = buckets[(size, start_ms)] = {}
                local = size == LOCAL_DAY
                for group, sums in groups.items():
                    if local and group == _GLOBAL_GROUP:
                        continue  # the global scope's days are UTC days
                    fields = bucket.get(group)
                    if fields is None:
                        bucket[group] = sums
                        continue
                    if (size, start_ms, group) not in owned:
                        owned.add((size, start_ms, group))
                        fields = bucket[group] = dict(fields)
                    for field, vector in sums.items():
                        total = fields.get(field)
                        fields[field] = vector if total is None else total + vector
        hashes, global_keys = [], []
        deltas: list[bytes] = []
        packed: dict[int, bytes] = {}  # id of a fields dict -> its packed vectors
        width = _PACKED.size
        for (size, start_ms), bucket in buckets.items():
            ttl_ms = start_ms + _SPAN_MS[size] - now_ms
            suffix = f"{size}:{start_ms}"
            for group, fields in bucket.items():
                only = fields.get(None)
                if only is not None:  # a global bucket, in another slot: through the outbox
                    global_keys.append([group + suffix, ttl_ms, _values(only)])
                    continue
                hashes.append([group + suffix, ttl_ms, list(fields)])
                block = packed.get(id(fields))
                if block is None:
                    block = packed[id(fields)] = b"".join(
                        [v.to_bytes(width, "big") for v in fields.values()]
                    )
                deltas.append(block)
        first_value = min(newest_ms, now_ms)
        firsts = _first_seen_targets(items, reach) if reach is not None else []
        api_keys, user_counts, tenant_counts = _reach_counts(items, reach, first_value)
        ranks, global_ranks = _by_slot(rollups.ranks())
        distinct, global_distinct = _by_slot(
            _distinct_counts(items, reach) if reach is not None else []
        )
        contribution = {"k": global_keys, "z": global_ranks, "u": global_distinct}
        tenant = items[0].event.tenant_id
        payload = {
            "x": self._dedup_horizon_ms,
            "s": [[hour, ids] for hour, ids in by_hour.items()],
            "g": hashes,
            "z": ranks,
            "h": rollups.quality(),
            "u": distinct,
            "f": [keys.first_seen_key(*target) for target in firsts],
            "fv": first_value,
            "ft": MAX_RETENTION_S,
            "c": user_counts,
            "r": holds,
            "o": keys.global_outbox_key(tenant),
            "q": keys.global_outbox_seq_key(tenant),
            "ot": self._dedup_horizon_ms,
            "od": self._forwarded.get(tenant, 0),
            "gr": orjson.dumps(contribution).decode(),
        }
        asked = _Asked(firsts, first_value, api_keys, reach, tenant_counts)
        return orjson.dumps(payload), b"".join(deltas), asked

    async def read_windows(
        self,
        requests: Sequence[tuple[str, Scope, str, str]],
        now_ms: int,
        zones: Zones | None = None,
    ) -> list[dict[str, float]]:
        """Metrics of each (tenant, scope, entity, window), summed inside Redis.

        One Lua call per tenant adds up the buckets server-side, with one HMGET per bucket
        hash for every entity read from it, so a batch that touches thousands of entities costs
        a few hundred commands, not one per bucket.
        """
        by_owner: dict[str, list[int]] = defaultdict(list)
        asks: list[list[object]] = []
        buckets: dict[tuple[str, tzinfo | None], tuple[int | str, list[int]]] = {}
        for index, (tenant, scope, entity, window) in enumerate(requests):
            owner = keys.GLOBAL_TENANT if scope is Scope.global_ else tenant
            by_owner[owner].append(index)
            zone = zones(tenant) if zones is not None and owner != keys.GLOBAL_TENANT else None
            read = buckets.get((window, zone))
            if read is None:
                read = buckets[(window, zone)] = window_buckets(window, now_ms, zone)
            size_s, starts = read
            series = window.partition("#")[2]
            group, field = (
                series_slot(owner, series, scope, entity)
                if series
                else window_slot(tenant, scope, entity)
            )
            prefix = f"{group}{size_s}:"
            asks.append([prefix, starts] if field is None else [prefix, starts, field])
        pipe = await self._pipeline()
        owners = list(by_owner)
        for owner in owners:
            mine = orjson.dumps([asks[index] for index in by_owner[owner]])
            # The one declared key puts the call in the owner's Redis Cluster slot.
            await self._sum(keys=[dedup_prefix(owner)], args=[mine], client=pipe)
        replies = await self._execute(pipe)
        out: list[dict[str, float]] = [{} for _ in requests]
        for owner, reply in zip(owners, replies, strict=True):
            for n, index in enumerate(by_owner[owner]):
                out[index] = named_metrics(reply[n * WIDTH : (n + 1) * WIDTH])
        return out


@dataclass(frozen=True, slots=True)
class _Asked:
    """What one tenant's apply call asks back: first-seen times of `firsts`, and the distinct
    users and tenants of `api_keys` (one count each per kind the rules need, in that order)."""

    firsts: list[tuple[str, Scope, str]]
    first_value: int  # what a new entity's first-seen time is recorded as
    api_keys: list[str]
    needs: ReachNeeds | None
    tenant_counts: list[list[str]]  # distinct-tenant keys to count, in the global slot

    def reach(
        self, tenant: str, user_counts: Sequence[int], tenant_counts: Iterator[int]
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """(tenant, API key) -> (distinct users, distinct tenants); takes this call's share of
        the tenant counts from the iterator."""
        if self.needs is None or not self.api_keys:
            return {}
        out = {}
        for n, key in enumerate(self.api_keys):
            users = int(user_counts[n]) if self.needs.key_users else 0
            tenants = int(next(tenant_counts)) if self.needs.key_tenants else 0
            out[(tenant, key)] = (users, tenants)
        return out


def _reach_counts(
    items: Sequence[PricedEvent], reach: ReachNeeds | None, at_ms: int
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """The tenant's API keys whose reach the rules read, and for each the distinct-count keys
    to count over the hours covering key_window_s: its users (in the tenant's slot), the
    tenants it was used from (in the global slot), as the rules need them."""
    if reach is None or not (reach.key_users or reach.key_tenants):
        return [], [], []
    api_keys = sorted({it.event.api_key_id for it in items if it.event.api_key_id is not None})
    hours = max(1, -(-reach.key_window_s // HOUR_S))
    last = at_ms - at_ms % _HOUR_MS
    starts = [last - i * _HOUR_MS for i in range(hours)]
    tenant = items[0].event.tenant_id if items else ""
    users: list[list[str]] = []
    tenants: list[list[str]] = []
    for key in api_keys:
        if reach.key_users:
            users.append([keys.key_users_key(tenant, key, h) for h in starts])
        if reach.key_tenants:
            tenants.append([keys.key_tenants_key(key, h) for h in starts])
    return api_keys, users, tenants


def _by_slot(groups: list[list[object]]) -> tuple[list[list[object]], list[list[object]]]:
    """Groups whose key is in the tenant's slot, and those in the global slot."""
    own: list[list[object]] = []
    elsewhere: list[list[object]] = []
    for group in groups:
        (elsewhere if _GLOBAL_TAG in str(group[0]) else own).append(group)
    return own, elsewhere


def _first_seen_targets(
    items: Sequence[PricedEvent], reach: ReachNeeds
) -> list[tuple[str, Scope, str]]:
    """The entities of the scopes whose first-seen time is kept, once each."""
    if not reach.first_seen:
        return []
    fields = [(scope, field) for scope, field in NESTED_FIELDS if scope in reach.first_seen]
    targets: dict[tuple[str, Scope, str], None] = {}
    for it in items:
        ev = it.event
        for scope, name in fields:
            entity = getattr(ev, name)
            if entity is not None:
                targets[(ev.tenant_id, scope, entity)] = None
    return list(targets)


def _distinct_counts(items: Sequence[PricedEvent], reach: ReachNeeds) -> list[list[object]]:
    """HyperLogLog additions: each event's user and tenant under its API key and hour."""
    if not (reach.key_users or reach.key_tenants):
        return []
    by_key: dict[str, dict[str, None]] = defaultdict(dict)
    for it in items:
        ev = it.event
        if ev.api_key_id is None:
            continue
        hour_ms = ev.ts_ms - ev.ts_ms % _HOUR_MS
        if reach.key_users and ev.user_id is not None:
            by_key[keys.key_users_key(ev.tenant_id, ev.api_key_id, hour_ms)][ev.user_id] = None
        if reach.key_tenants:
            by_key[keys.key_tenants_key(ev.api_key_id, hour_ms)][ev.tenant_id] = None
    return [[key, HLL_KEEP_S, list(members)] for key, members in by_key.items()]


_DAY_SPAN_MS = _SPAN_MS[DAY_S]
_DAY_MS = DAY_S * 1000
# A tenant's roll-ups of one day: the tenants' ranking, (ranking, event field) of each nested
# scope, the quality hash's key.
_DayKeys = tuple[dict[str, int], tuple[tuple[dict[str, int], str], ...], str]
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
        # (tenant, day) -> the tenants' ranking, (ranking, event field) per scope, quality key;
        # None when the day is past the roll-ups' retention
        self._days: dict[tuple[str, int], _DayKeys | None] = {}

    def _day(self, tenant: str, day_ms: int) -> _DayKeys | None:
        ttl = day_ms + _DAY_SPAN_MS - self._now_ms
        if ttl <= 0:
            return None  # older than the day buckets' retention: the roll-ups are gone too
        tenants_key = keys.rank_key(keys.GLOBAL_TENANT, "tenant", day_ms)
        self._ttl[tenants_key] = ttl
        nested = []
        for scope, name in NESTED_FIELDS:
            key = keys.rank_key(tenant, scope.value, day_ms)
            self._ttl[key] = ttl
            nested.append((self._ranks[key], name))
        quality_key = keys.quality_key(tenant, day_ms)
        self._ttl[quality_key] = ttl
        return self._ranks[tenants_key], tuple(nested), quality_key

    def add(self, ev: UsageEvent, cost_micros: int) -> None:
        tenant, ts_ms = ev.tenant_id, ev.ts_ms
        day = (tenant, ts_ms - ts_ms % _DAY_MS)
        if day in self._days:
            found = self._days[day]
        else:
            found = self._days[day] = self._day(*day)
        if found is None:
            return
        tenants, nested, quality_key = found
        tenants[tenant] += cost_micros
        for members, name in nested:
            entity = getattr(ev, name)
            if entity is not None:
                members[entity] += cost_micros
        if ev.tags:
            quality = quality_signal(ev.tags.get("quality"))
            if quality is not None:
                fields = self._quality[quality_key]
                fields[f"{ev.model}|n"] += 1
                fields[f"{ev.model}|q"] += quality
                fields[f"{ev.model}|c"] += cost_micros

    def ranks(self) -> list[list[object]]:
        return [
            _flat_group(key, self._ttl[key], members)
            for key, members in self._ranks.items()
            if members
        ]

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


def series_slot(owner: str, series: str, scope: Scope, entity: str) -> Slot:
    """Where an entity's buckets of a rule's filtered series live: fields of the tenant's
    bucket hashes, or keys of their own in the global slot for a global rule.

    >>> series_slot("acme", "r.chat", Scope.user, "u1")
    ('det:win:{t:acme}:', 'r.chat|u1')
    >>> series_slot("acme", "r.chat", Scope.tenant, "acme")
    ('det:win:{t:acme}:', 'r.chat')
    >>> series_slot("_global", "r.all", Scope.global_, "all")
    ('det:win:{t:_global}:r.all:', None)
    """
    if owner == keys.GLOBAL_TENANT:
        return keys.window_hash_key(owner, series, "", "")[:-1], None
    field = series if scope in SINGLE_SCOPES else f"{series}|{entity}"
    return tenant_group(owner), field


_NESTED_PREFIXES = tuple((f"{scope.value}|", field) for scope, field in NESTED_FIELDS)


def entity_slots(event: UsageEvent) -> list[Slot]:
    """(bucket group, field) of every entity the event belongs to, one per scope it names.

    >>> entity_slots(UsageEvent(event_id="e", ts_ms=0, tenant_id="a", model="m"))[1:]
    [('det:win:{t:a}:', 'tenant'), ('det:win:{t:a}:', 'model|m')]
    """
    group = tenant_group(event.tenant_id)
    out: list[Slot] = [_GLOBAL_SLOT, (group, TENANT_FIELD)]
    for prefix, name in _NESTED_PREFIXES:
        entity = getattr(event, name)
        if entity is not None:
            out.append((group, prefix + entity))
    return out


def _chunks(items: list[PricedEvent], size: int) -> list[list[PricedEvent]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _lanes(values: list[int]) -> int:
    """A counter vector as one integer, one 64-bit lane per counter, the first counter in the
    highest lane: adding two of them adds every counter (no lane of a batch's sums comes near
    2**64, and counters are never negative), and its 88 big-endian bytes are the packed bucket.

    >>> _lanes([1, 2] + [0] * 9).to_bytes(_PACKED.size, "big") == _PACKED.pack(1, 2, *[0] * 9)
    True
    """
    return int.from_bytes(_PACKED.pack(*values), "big")


def _values(lanes: int) -> list[int]:
    """The counters of a lanes integer (the inverse of _lanes)."""
    return list(_PACKED.unpack(lanes.to_bytes(_PACKED.size, "big")))


@lru_cache(maxsize=4096)  # a batch asks for the same few minutes once per tenant
def _spread(
    minute_ms: int, late: bool, zone: tzinfo | None, now_ms: int
) -> tuple[tuple[int | str, int], ...]:
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
    return tuple(out)


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
    # Plain tuples: building a NamedTuple for each entity was a Python-level call apiece.
    seen: set[Touched] = set()
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
    return seen
