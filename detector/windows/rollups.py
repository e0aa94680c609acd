"""Reading the daily roll-ups that the window writer keeps for the reports.

Per tenant and UTC day the writer keeps, in the same atomic call that counts the events:
a sorted set per scope (user, feature, model, api_key, session) of each entity's cost in
micro-dollars, a sorted set of each tenant's cost under the global pseudo-tenant, and a hash of
the quality signal per model. They live as long as the day buckets (70 days after the day).
A member exists for every entity seen that day, even at zero cost, so the size of the day's
user set is the exact number of active users.
"""

from __future__ import annotations

from typing import cast

from detector import keys
from detector.redis_client import RedisClient


async def read_rank(
    redis: RedisClient, tenant_id: str, scope: str, day_start_ms: int
) -> dict[str, int]:
    """Cost in micro-dollars of every entity of `scope` in one tenant on one UTC day.

    With `tenant_id` GLOBAL_TENANT and scope "tenant", the cost of every tenant.
    """
    key = keys.rank_key(tenant_id, scope, day_start_ms)
    pairs = await redis.zrange(key, 0, -1, withscores=True)
    return {_text(pair[0]): int(pair[1]) for pair in cast(list[tuple[bytes, float]], pairs)}


async def read_quality(
    redis: RedisClient, tenant_id: str, day_start_ms: int
) -> dict[str, tuple[int, int, int]]:
    """Per model: (events carrying a quality signal, sum of quality in millionths, their cost
    in micro-dollars) for one tenant on one UTC day."""
    raw = await redis.hgetall(keys.quality_key(tenant_id, day_start_ms))
    parts: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        model, _, part = _text(field).rpartition("|")
        parts.setdefault(model, {})[part] = int(value)
    return {m: (p.get("n", 0), p.get("q", 0), p.get("c", 0)) for m, p in parts.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
