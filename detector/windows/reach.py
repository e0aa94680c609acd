"""Who an entity reaches, for the abuse patterns: when it was first seen, and how many distinct
users and tenants an API key serves (HyperLogLog per hour, about 0.8% standard error)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis.asyncio import Redis

from detector import keys
from detector.schemas import Scope, UsageEvent
from detector.windows.buckets import HOUR_S, MAX_RETENTION_S, bucket_start_ms

HLL_KEEP_S = 2 * 86400  # longer than any window a distinct count is asked for


class ReachStore:
    """First-seen times and distinct counts in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def first_seen(self, targets: Sequence[tuple[str, Scope, str]], now_ms: int) -> list[int]:
        """When each entity was first seen; one not seen before is recorded as seen now.

        Kept as long as the longest window, so "new" means new within that time.
        """
        pipe = self._redis.pipeline(transaction=False)
        for tenant, scope, entity in targets:
            key = keys.first_seen_key(tenant, scope, entity)
            pipe.set(key, now_ms, nx=True, ex=MAX_RETENTION_S, get=True)
        return [int(v) if v is not None else now_ms for v in await pipe.execute()]

    async def add_key_use(self, events: Iterable[UsageEvent], users: bool, tenants: bool) -> None:
        """Count each event's user and tenant in its API key's hourly HyperLogLogs."""
        by_key: dict[str, set[str]] = {}
        for ev in events:
            if ev.api_key_id is None:
                continue
            hour = bucket_start_ms(ev.ts_ms, HOUR_S)
            if users and ev.user_id is not None:
                by_key.setdefault(keys.key_users_key(ev.tenant_id, ev.api_key_id, hour), set()).add(
                    ev.user_id
                )
            if tenants:
                by_key.setdefault(keys.key_tenants_key(ev.api_key_id, hour), set()).add(
                    ev.tenant_id
                )
        if not by_key:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, members in by_key.items():
            pipe.pfadd(key, *members)
            pipe.expire(key, HLL_KEEP_S)
        await pipe.execute()

    async def key_reach(
        self, targets: Sequence[tuple[str, str]], window_s: int, now_ms: int
    ) -> list[tuple[int, int]]:
        """(distinct users, distinct tenants) of each (tenant, api key) over the last hours
        covering `window_s`."""
        hours = max(1, -(-window_s // HOUR_S))
        last = bucket_start_ms(now_ms, HOUR_S)
        starts = [last - i * HOUR_S * 1000 for i in range(hours)]
        pipe = self._redis.pipeline(transaction=False)
        for tenant, api_key in targets:
            pipe.pfcount(*(keys.key_users_key(tenant, api_key, h) for h in starts))
            pipe.pfcount(*(keys.key_tenants_key(api_key, h) for h in starts))
        replies = await pipe.execute()
        return [(int(u), int(t)) for u, t in zip(replies[::2], replies[1::2], strict=True)]
