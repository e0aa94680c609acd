"""What the reports read from Redis: a period's metrics per entity (day buckets, through the
window store), the period's cost per entity of a scope (the daily rank sets, unioned inside
Redis) and the quality signal per model."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from detector import keys
from detector.redis_client import RedisClient
from detector.reports.periods import CALENDAR_WINDOW, Period
from detector.schemas import Scope
from detector.windows.buckets import shifted
from detector.windows.counters import MONEY_METRICS, WindowStore

# A union is deleted as soon as it is read; the expiry only covers a client that dies between.
SCRATCH_TTL_MS = 60_000
# Beyond this many entries a union is added up here, from pages of PAGE_ENTRIES, rather than
# by one ZUNIONSTORE that would keep Redis busy for tens of milliseconds or more.
UNION_IN_REDIS_MAX = 20_000
PAGE_ENTRIES = 5_000

QUALITY_PARTS = {"n": 0, "q": 1, "c": 2}
Metrics = dict[str, int]  # metric -> integer sum, money in micro-dollars


@dataclass(frozen=True, slots=True)
class Rank:
    """A scope's entities over a period: how many were active, and the costliest first."""

    count: int
    costs: list[tuple[str, int]]  # (entity id, micro-dollars), highest first


def period_window(period: Period, now_ms: int) -> str:
    """The window name that reads `period`'s day buckets when read at now_ms: its calendar
    window (today, week, month) as it stood on the period's last day."""
    earlier_s = (now_ms - period.through_ms) // 1000
    return shifted(CALENDAR_WINDOW[period.kind], earlier_s)


class RollupReader:
    def __init__(self, redis: RedisClient, windows: WindowStore) -> None:
        self._redis = redis
        self._windows = windows

    async def metrics(
        self, asks: Sequence[tuple[str, Scope, str]], period: Period, now_ms: int
    ) -> list[Metrics]:
        """Every metric of each (tenant, scope, entity) summed over the period, as integers."""
        if not asks:
            return []
        window = period_window(period, now_ms)
        reads = await self._windows.read_windows(
            [(tenant, scope, entity, window) for tenant, scope, entity in asks], now_ms
        )
        return [
            {
                name: round(value * 1_000_000) if name in MONEY_METRICS else int(value)
                for name, value in read.items()
            }
            for read in reads
        ]

    async def ranks(
        self, asks: Sequence[tuple[str, str]], period: Period, top: int | None = None
    ) -> list[Rank]:
        """For each (tenant, scope): the number of entities active in the period and the `top`
        costliest (all when None), from the union of the daily rank sets.

        Small unions are made inside Redis (one pipeline for all of them), so only `top` rows
        come back. A union of more than UNION_IN_REDIS_MAX entries would hold Redis, and with it
        the worker, for too long (measured: 390 ms for 31 days of 20,000 sessions), so those
        are read a page at a time and added up here.
        """
        if not asks:
            return []
        sources = [[keys.rank_key(t, scope, day) for day in period.days] for t, scope in asks]
        pipe = self._redis.pipeline(transaction=False)
        for names in sources:
            for name in names:
                pipe.zcard(name)
        sizes = iter(await pipe.execute())
        entries = [sum(next(sizes) for _ in names) for names in sources]
        small = [i for i, n in enumerate(entries) if n <= UNION_IN_REDIS_MAX]
        out: dict[int, Rank] = {}
        pipe = self._redis.pipeline(transaction=False)
        for i in small:
            scratch = keys.report_scratch_key(asks[i][0], uuid.uuid4().hex)
            pipe.zunionstore(scratch, sources[i])
            pipe.pexpire(scratch, SCRATCH_TTL_MS)
            # ZRANGE 1 0 is empty: top=0 asks for the count alone
            start, stop = (0, -1) if top is None else (0, top - 1) if top > 0 else (1, 0)
            pipe.zrange(scratch, start, stop, desc=True, withscores=True)
            # Queued as a plain command: a cluster pipeline's unlink() is a coroutine of its
            # own (it splits keys by slot) that runs outside the pipeline.
            pipe.execute_command("UNLINK", scratch)
        replies = await pipe.execute() if small else []
        for n, i in enumerate(small):
            count, _, rows, _ = replies[4 * n : 4 * n + 4]
            out[i] = Rank(int(count), [(_text(member), round(score)) for member, score in rows])
        for i, names in enumerate(sources):
            if i not in out:
                out[i] = await self._paged_union(names, top)
        return [out[i] for i in range(len(asks))]

    async def _paged_union(self, names: Sequence[str], top: int | None) -> Rank:
        totals: dict[str, int] = defaultdict(int)
        for name in names:
            start = 0
            while True:
                page = await self._redis.zrange(
                    name, start, start + PAGE_ENTRIES - 1, withscores=True
                )
                for member, score in cast(list[tuple[bytes, float]], page):
                    totals[_text(member)] += round(score)
                if len(page) < PAGE_ENTRIES:
                    break
                start += PAGE_ENTRIES
        # highest first, ties in reverse member order: what ZRANGE ... REV answers
        ranked = sorted(totals.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        return Rank(len(totals), ranked if top is None else ranked[:top])

    async def tenants(self, period: Period) -> list[tuple[str, int]]:
        """Every tenant with traffic in the period and its cost, costliest first."""
        [rank] = await self.ranks([(keys.GLOBAL_TENANT, "tenant")], period)
        return rank.costs

    async def quality(
        self, tenants: Sequence[str], period: Period
    ) -> dict[str, tuple[int, int, int]]:
        """Per model, over the tenants and the period: (rated events, sum of quality in
        millionths, cost of the rated events in micro-dollars)."""
        asks = [(tenant, day) for tenant in tenants for day in period.days]
        pipe = self._redis.pipeline(transaction=False)
        for tenant, day in asks:
            pipe.hgetall(keys.quality_key(tenant, day))
        sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for fields in await pipe.execute() if asks else []:
            for name, value in fields.items():
                # fields are `<model>|n`, `<model>|q` and `<model>|c` (see windows.rollups)
                model, _, part = _text(name).rpartition("|")
                if part in QUALITY_PARTS:
                    sums[model][QUALITY_PARTS[part]] += int(value)
        return {model: (row[0], row[1], row[2]) for model, row in sums.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
