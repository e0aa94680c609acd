"""Who an API key reaches, for the abuse patterns: how many distinct users and tenants it serves
(HyperLogLog per hour, about 0.8% standard error). The counts are added, and first-seen times
recorded, in the same atomic write as a batch's windows (WindowStore.apply_batch, ReachNeeds)."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from detector import keys
from detector.windows.buckets import HOUR_S, bucket_start_ms

HLL_KEEP_S = 2 * 86400  # longer than any window a distinct count is asked for


class ReachStore:
    """Distinct counts of API keys' users and tenants, read from Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

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
