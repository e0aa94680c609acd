"""What the API's handlers share: settings, Redis, stores, tokens and metrics."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram

from detector.api.auth import Grant, find_grant, parse_tokens
from detector.api.cache import DecisionCache
from detector.config import Settings
from detector.decisions.store import DecisionStore, Entity
from detector.pricing import PriceTable
from detector.redis_client import RedisClient
from detector.rules.holder import RulesHolder
from detector.rules.schema import RuleSet
from detector.schemas import Decision
from detector.sinks.kafka import KafkaSink
from detector.windows.counters import WindowStore

log = logging.getLogger("detector.api")

REDIS_DOWN_LOG_INTERVAL_S = 30.0


class Forbidden(Exception):
    """401 or 403, with the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiState:
    KEY: web.AppKey[ApiState] = web.AppKey("detector_state")

    def __init__(self, settings: Settings, redis: RedisClient) -> None:
        self.settings = settings
        self.redis = redis
        self.decisions = DecisionStore(redis)
        self.cache = (
            DecisionCache(
                redis,
                self.decisions,
                settings.api_cache_max_age_s,
                settings.api_cache_max_entries,
            )
            if settings.api_cache_max_age_s > 0
            else None
        )
        self.windows = WindowStore(redis, settings.dedup_horizon_s)
        secret = settings.api_tokens.get_secret_value() if settings.api_tokens else ""
        self.tokens = parse_tokens(secret)
        self._last_redis_log_s = 0.0
        self._kafka: KafkaSink | None = None
        self._rules: RulesHolder | None = None
        self._prices: PriceTable | None = None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "detector_api_requests", "API requests", ["endpoint", "outcome"], registry=self.registry
        )
        self.latency = Histogram(
            "detector_api_request_seconds",
            "API request latency",
            ["endpoint", "outcome"],
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "detector_api_redis_errors", "Requests answered without Redis", registry=self.registry
        )

    def authenticate(self, request: web.Request) -> Grant | None:
        """The presented token's grant (401 when missing or unknown); None when the API is open."""
        if not self.tokens:
            return None
        header = request.headers.get("Authorization", "")
        kind, _, presented = header.partition(" ")
        if kind.lower() != "bearer" or not presented:
            raise Forbidden(401, "missing bearer token")
        grant = find_grant(self.tokens, presented.strip())
        if grant is None:
            raise Forbidden(401, "unknown token")
        return grant

    def authorize(self, request: web.Request, scope: str, tenant_id: str | None) -> Grant | None:
        """Check the bearer token for `scope` on `tenant_id`; no tokens configured means open."""
        grant = self.authenticate(request)
        if grant is None:
            return None
        if not grant.permits(scope, tenant_id):
            raise Forbidden(403, f"token lacks {scope} for this tenant")
        return grant

    async def publish_decision(self, decision: Decision) -> None:
        """Announce a manual change on llm.cost.decisions; Redis already holds it, so a Kafka
        outage is logged rather than failing the request."""
        try:
            if self._kafka is None:
                kafka = KafkaSink(self.settings)
                await kafka.start()
                self._kafka = kafka
            await self._kafka.send_decisions([decision])
        except (KafkaError, OSError) as exc:
            log.error("could not publish a manual decision to Kafka: %r", exc)

    def current_rules(self) -> RuleSet:
        """The budgets reservations check, read on first use and re-read when the file changes."""
        if self._rules is None:
            self._rules = RulesHolder(self.settings.rules)
        else:
            self._rules.reload_if_changed()
        return self._rules()

    def prices(self) -> PriceTable:
        if self._prices is None:
            self._prices = PriceTable.load(self.settings.prices_file)
        return self._prices

    async def lookup(self, entities: list[Entity], now_ms: int) -> list[Decision]:
        """Decisions in force for the entities, from the cache when there is one."""
        if self.cache is not None:
            return await self.cache.lookup(entities, now_ms)
        return await self.decisions.lookup(entities, now_ms)

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.stop()
        if self._kafka is not None:
            await self._kafka.close()

    def redis_down(self) -> None:
        """Count an answer given without Redis; log at most once per interval."""
        self.redis_errors.inc()
        now_s = time.monotonic()
        if now_s - self._last_redis_log_s >= REDIS_DOWN_LOG_INTERVAL_S:
            self._last_redis_log_s = now_s
            policy = "allow (fail-open)" if self.settings.fail_open else "block (fail-closed)"
            log.error("Redis unreachable at %s; answering %s", self.settings.redis_url, policy)
