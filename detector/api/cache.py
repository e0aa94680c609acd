"""An in-process cache of decisions for the lookup API, kept fresh by Redis pub/sub.

Every change of a decision (new, extended, override, lift) is published on the decisions
channel; the cache drops that entity at once, so a lookup sees a change about as soon as
Redis delivers the message (milliseconds). Entries also age out after `max_age_s`, a bound
for anything pub/sub could miss. While the subscription is down the cache is emptied and
bypassed: every lookup goes to Redis until the subscription is back.

On a Redis Cluster the subscription is redis-py's cluster pub/sub, on one node: a classic
PUBLISH (the decisions channel is not sharded) reaches the subscribers of every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from detector import keys
from detector.decisions.store import DecisionStore, Entity, Stored, parse_changed, strictest
from detector.redis_client import REDIS_ERRORS, RedisClient
from detector.schemas import Decision

log = logging.getLogger("detector.api")


class DecisionCache:
    """Decisions per entity, fetched from Redis once and dropped when they change."""

    def __init__(
        self, redis: RedisClient, store: DecisionStore, max_age_s: float, max_entries: int
    ) -> None:
        self._redis = redis
        self._store = store
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        self._entries: dict[Entity, tuple[float, Stored]] = {}
        self._live = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._epoch = 0  # counts announced changes
        self.hits = 0
        self.misses = 0

    @property
    def live(self) -> bool:
        return self._live.is_set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        self._stopping = True
        task = self._task
        if task is None:
            return
        # redis-py can swallow a cancellation that lands while it connects; cancel again
        # until the follower is really gone, so that shutdown never hangs on it.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError, *REDIS_ERRORS):
            task.result()

    async def wait_live(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._live.wait(), timeout_s)
        return self.live

    async def lookup(self, entities: Sequence[Entity], now_ms: int) -> list[Decision]:
        """Like DecisionStore.lookup, from memory where the cache holds the entity."""
        if not self.live:
            return await self._store.lookup(entities, now_ms)
        now_s = time.monotonic()
        stored: list[Stored | None] = []
        missing: list[Entity] = []
        for entity in entities:
            entry = self._entries.get(entity)
            if entry is not None and now_s - entry[0] < self._max_age_s:
                stored.append(entry[1])
                self.hits += 1
            else:
                stored.append(None)
                missing.append(entity)
        if missing:
            self.misses += len(missing)
            epoch = self._epoch
            fetched = await self._store.fetch(missing)
            # A change announced while we were fetching may postdate what we read: then the
            # answer is still given, but not kept.
            if epoch == self._epoch and self.live:
                if len(self._entries) + len(missing) > self._max_entries:
                    self._entries.clear()  # crude but bounded; a full cache refills in seconds
                for entity, value in zip(missing, fetched, strict=True):
                    self._entries[entity] = (now_s, value)
            fill = iter(fetched)
            stored = [s if s is not None else next(fill) for s in stored]
        return strictest([s for s in stored if s is not None], now_ms)

    async def _follow(self) -> None:
        delay_s = 0.2
        while not self._stopping:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(keys.DECISIONS_CHANNEL)
                self._entries.clear()  # whatever changed while we were away
                self._epoch += 1
                self._live.set()
                delay_s = 0.2
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    entity = parse_changed(message["data"])
                    if entity is None:
                        continue
                    self._epoch += 1
                    self._entries.pop(entity, None)
            except REDIS_ERRORS as exc:
                log.warning("decision cache: subscription lost (%r); bypassing the cache", exc)
            finally:
                self._live.clear()
                self._entries.clear()
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)
