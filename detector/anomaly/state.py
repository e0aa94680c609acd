"""Anomaly model state per entity, kept in memory and persisted in Redis.

Each modelled entity's state (its river detector plus a few counters) is pickled under its own
key, hash-tagged by tenant, and written whenever one of its intervals closes; the key expires
after `idle_expiry` without a write. A per-tenant index maps each modelled entity to the start
of the last interval its model saw: a worker checks it before using a state it holds in memory,
so after a partition moved away and back it reloads the newer state instead of rolling back.
The index also caps the models per tenant: when full (after dropping idle entries), entities
not yet modelled stay unmodelled; the tenant itself is always modelled.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis

from detector import keys
from detector.anomaly.detectors import UnivariateDetector
from detector.anomaly.intervals import EntityKey, SubKey
from detector.schemas import Scope

MEAN_ALPHA = 0.05  # the usual interval spend, for naming contributors, follows ~20 intervals
MAX_USUAL_PARTS = 24  # sub-dimensions whose usual spend an entity remembers (the biggest)


@dataclass(slots=True)
class EntityState:
    """One entity's model and the counters around it."""

    signature: str  # detector settings the model was built with; a change starts afresh
    detector: UnivariateDetector
    last_start_ms: int = -1  # start of the last interval the model saw
    intervals: int = 0
    anomalous_run: int = 0  # anomalous intervals in a row
    mean_usd: float = 0.0  # usual spend per active interval
    unsaved: int = 0  # intervals seen since the state was last written to Redis
    # Usual spend per interval of the biggest sub-dimensions (user, feature, model, key), so an
    # alert can say which of them spent more than they usually do.
    usual_parts: dict[SubKey, float] = field(default_factory=dict)

    def learned(self, cost_usd: float, parts: Mapping[SubKey, int]) -> None:
        """Fold a normal interval into the usual figures (exponentially weighted means)."""
        alpha = max(1.0 / (self.intervals + 1), MEAN_ALPHA)
        self.mean_usd += alpha * (cost_usd - self.mean_usd)
        usual = self.usual_parts
        for key in usual:
            usual[key] *= 1 - alpha
        for key, micros in parts.items():
            usual[key] = usual.get(key, 0.0) + alpha * micros / 1_000_000
        if len(usual) > MAX_USUAL_PARTS:
            keep = sorted(usual.items(), key=lambda kv: -kv[1])[:MAX_USUAL_PARTS]
            self.usual_parts = dict(keep)


def field_name(scope: Scope, entity: str) -> str:
    """An entity's field in its tenant's index.

    >>> field_name(Scope.user, "u:1")
    'user:u:1'
    """
    return f"{scope.value}:{entity}"


class ModelStore:
    """Entity states in Redis: load, save, and the per-tenant index with its cap."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def marks(self, entities: Iterable[EntityKey]) -> dict[EntityKey, int | None]:
        """For each entity, the last interval start stored in its tenant's index (None: none)."""
        wanted = list(entities)
        pipe = self._redis.pipeline(transaction=False)
        for tenant, scope, entity in wanted:
            pipe.hget(keys.anomaly_index_key(tenant), field_name(scope, entity))
        replies = await pipe.execute() if wanted else []
        return {
            key: (int(raw) if raw is not None else None)
            for key, raw in zip(wanted, replies, strict=True)
        }

    async def load(self, entities: Iterable[EntityKey]) -> dict[EntityKey, EntityState]:
        """The stored states of these entities (absent ones are left out)."""
        wanted = list(entities)
        if not wanted:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for tenant, scope, entity in wanted:
            pipe.get(keys.anomaly_model_key(tenant, scope.value, entity))
        out = {}
        for key, raw in zip(wanted, await pipe.execute(), strict=True):
            if raw is None:
                continue
            # Our own bytes, written by save() into the tenant's keys; never user input.
            state = pickle.loads(raw)  # noqa: S301
            if isinstance(state, EntityState):
                out[key] = state
        return out

    async def sizes(self, tenants: Iterable[str]) -> dict[str, int]:
        """How many entities each tenant's index holds."""
        names = list(tenants)
        pipe = self._redis.pipeline(transaction=False)
        for tenant in names:
            pipe.hlen(keys.anomaly_index_key(tenant))
        replies = await pipe.execute() if names else []
        return {t: int(n) for t, n in zip(names, replies, strict=True)}

    async def prune(self, tenant: str, older_than_ms: int) -> int:
        """Drop index entries whose last interval is older than `older_than_ms`; say how many."""
        index = keys.anomaly_index_key(tenant)
        entries = await self._redis.hgetall(index)
        stale = [f for f, v in entries.items() if int(v) < older_than_ms]
        if stale:
            await self._redis.hdel(index, *stale)
        return len(stale)

    async def save(self, states: Mapping[EntityKey, EntityState], idle_expiry_s: int) -> int:
        """Write states and their index entries in one round trip; return bytes written."""
        if not states:
            return 0
        ttl_ms = idle_expiry_s * 1000
        pipe = self._redis.pipeline(transaction=False)
        written = 0
        touched_tenants: set[str] = set()
        for (tenant, scope, entity), state in states.items():
            state.unsaved = 0
            body = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
            written += len(body)
            pipe.set(keys.anomaly_model_key(tenant, scope.value, entity), body, px=ttl_ms)
            pipe.hset(
                keys.anomaly_index_key(tenant), field_name(scope, entity), state.last_start_ms
            )
            touched_tenants.add(tenant)
        for tenant in touched_tenants:
            pipe.pexpire(keys.anomaly_index_key(tenant), ttl_ms)
        await pipe.execute()
        return written
