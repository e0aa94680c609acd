"""Anomaly model state per entity, kept in memory and persisted in Redis.

Each tenant has two Redis hashes (hash-tagged by tenant, so one Cluster slot): `models` holds
each modelled entity's pickled state (its river detector and a few counters), and `idx` the
start of the last interval that state had seen. States are written in one round trip per
closing round, every `persist_every` intervals of each entity. Before using a state it holds in
memory, a worker reads the index (one HMGET per tenant): if another worker wrote a newer state
(the partition moved away and back), it reloads instead of rolling the model back.

Bounds: both hashes expire `idle_expiry` after the tenant's last write; within a tenant, entries
whose last interval is older than `idle_expiry` are dropped when the tenant reaches `max_models`,
and if it is still full, entities not yet modelled stay unmodelled (the tenant itself always
is), while the rules and per-event outliers still watch them.
"""

from __future__ import annotations

import pickle
from array import array
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from detector import keys
from detector.anomaly.detectors import UnivariateDetector
from detector.anomaly.intervals import EntityKey, SubKey
from detector.redis_client import RedisClient
from detector.schemas import Scope

STATE_VERSION = 3  # bumped when EntityState gains fields: older pickles are not reused
MEAN_ALPHA = 0.05  # the usual interval spend, for naming contributors, follows ~20 intervals
RECENT_ALPHA = 0.3  # the recent level follows the last 3-5 normal intervals
MAX_USUAL_PARTS = 24  # sub-dimensions whose usual spend an entity remembers (the biggest)


@dataclass(slots=True)
class EntityState:
    """One entity's model and the counters around it."""

    signature: str  # detector settings the model was built with; a change starts afresh
    # None until the entity has spent in as many intervals as the warm-up: no model could
    # judge before, so the intervals wait in `cold` and the model, built then, learns them in
    # order. Most entities of a busy tenant (users seen a few times) never need one.
    detector: UnivariateDetector | None
    last_start_ms: int = -1  # start of the last interval the model saw
    intervals: int = 0  # intervals learned
    anomalous_run: int = 0  # anomalous intervals in a row
    mean_usd: float = 0.0  # usual spend per active interval
    recent_usd: float = 0.0  # spend of the last few normal intervals (fast mean)
    call_usd: float = 0.0  # usual cost per call (mean over normal intervals)
    calls: float = 0.0  # usual calls per active interval
    # An episode: since an anomalous interval, every interval still above the band. What it
    # teaches the model moves the expected value only (see UnivariateDetector.learn_one).
    episode: bool = False
    episode_paged: bool = False  # the episode has paged (its entity's scope-mates fold into it)
    run_excess_usd: float = 0.0  # spend above expected over the current anomalous run
    unsaved: int = 0  # intervals seen since the state was last written to Redis
    # Usual spend per interval of the biggest sub-dimensions (user, feature, model, key), so an
    # alert can say which of them spent more than they usually do. Stored divided by `fade`, so
    # fading every entry is one multiplication (fade) rather than one per entry.
    usual_scaled: dict[SubKey, float] = field(default_factory=dict)
    fade: float = 1.0
    # (ts s, cost) of each interval not yet modelled, flat: 16 bytes an interval, not 110.
    cold: array[float] = field(default_factory=lambda: array("d"))

    def learned(self, cost_usd: float, parts: Mapping[SubKey, int], requests: int = 0) -> None:
        """Fold a normal interval into the usual figures (exponentially weighted means)."""
        alpha = max(1.0 / (self.intervals + 1), MEAN_ALPHA)
        self.mean_usd += alpha * (cost_usd - self.mean_usd)
        self.calls += alpha * (requests - self.calls)
        if requests:
            self.call_usd += alpha * (cost_usd / requests - self.call_usd)
        fast = max(1.0 / (self.intervals + 1), RECENT_ALPHA)
        self.recent_usd += fast * (cost_usd - self.recent_usd)
        self.fade *= 1 - alpha
        if self.fade < 1e-9:
            self._rescale()
        usual, gain = self.usual_scaled, alpha / self.fade / 1_000_000
        for key, micros in parts.items():
            usual[key] = usual.get(key, 0.0) + gain * micros
        if len(usual) > 2 * MAX_USUAL_PARTS:
            keep = sorted(usual.items(), key=lambda kv: -kv[1])[:MAX_USUAL_PARTS]
            self.usual_scaled = dict(keep)

    def usual_usd(self, key: SubKey) -> float:
        """Usual spend per interval of one sub-dimension (0 when it is not among the biggest)."""
        return self.usual_scaled.get(key, 0.0) * self.fade

    def _rescale(self) -> None:
        self.usual_scaled = {k: v * self.fade for k, v in self.usual_scaled.items()}
        self.fade = 1.0


def field_name(scope: Scope, entity: str) -> str:
    """An entity's field in its tenant's hashes.

    >>> field_name(Scope.user, "u:1")
    'user:u:1'
    """
    return f"{scope.value}:{entity}"


def _by_tenant(entities: Iterable[EntityKey]) -> dict[str, list[EntityKey]]:
    out: dict[str, list[EntityKey]] = defaultdict(list)
    for key in entities:
        out[key[0]].append(key)
    return out


class ModelStore:
    """Entity states in Redis: load, save, and the per-tenant index with its cap."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def marks(self, entities: Iterable[EntityKey]) -> dict[EntityKey, int | None]:
        """For each entity, the last interval start in its tenant's index (None: not modelled)."""
        groups = _by_tenant(entities)
        if not groups:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for tenant, group in groups.items():
            pipe.hmget(keys.anomaly_index_key(tenant), [field_name(s, e) for _, s, e in group])
        out: dict[EntityKey, int | None] = {}
        for group, replies in zip(groups.values(), await pipe.execute(), strict=True):
            for key, raw in zip(group, replies, strict=True):
                out[key] = int(raw) if raw is not None else None
        return out

    async def load(self, entities: Iterable[EntityKey]) -> dict[EntityKey, EntityState]:
        """The stored states of these entities (absent ones are left out)."""
        groups = _by_tenant(entities)
        if not groups:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for tenant, group in groups.items():
            pipe.hmget(keys.anomaly_models_key(tenant), [field_name(s, e) for _, s, e in group])
        out = {}
        for group, replies in zip(groups.values(), await pipe.execute(), strict=True):
            for key, raw in zip(group, replies, strict=True):
                if raw is None:
                    continue
                # Our own bytes, written by save() into the tenant's hash; never user input.
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
        """Drop entities whose last interval is older than `older_than_ms`; say how many."""
        index = keys.anomaly_index_key(tenant)
        entries = await self._redis.hgetall(index)
        stale = [f for f, v in entries.items() if int(v) < older_than_ms]
        if stale:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hdel(index, *stale)
            pipe.hdel(keys.anomaly_models_key(tenant), *stale)
            await pipe.execute()
        return len(stale)

    async def save(self, states: Mapping[EntityKey, EntityState], idle_expiry_s: int) -> int:
        """Write states and their index entries, one round trip; return the bytes written."""
        if not states:
            return 0
        ttl_ms = idle_expiry_s * 1000
        pipe = self._redis.pipeline(transaction=False)
        written = 0
        for tenant, group in _by_tenant(states).items():
            bodies: dict[str, bytes] = {}
            marks: dict[str, int] = {}
            for key in group:
                state = states[key]
                state.unsaved = 0
                name = field_name(key[1], key[2])
                bodies[name] = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
                marks[name] = state.last_start_ms
                written += len(bodies[name])
            models, index = keys.anomaly_models_key(tenant), keys.anomaly_index_key(tenant)
            pipe.hset(models, mapping=bodies)  # type: ignore[arg-type]
            pipe.hset(index, mapping=marks)  # type: ignore[arg-type]
            pipe.pexpire(models, ttl_ms)
            pipe.pexpire(index, ttl_ms)
        await pipe.execute()
        return written
