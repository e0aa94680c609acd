"""Manual overrides from the command line: the same store and records as the API's."""

from __future__ import annotations

import getpass
import time

from detector.config import Settings
from detector.decisions.policy import lift_record, manual_decision
from detector.decisions.store import DecisionStore
from detector.errors import ConfigError
from detector.redis_client import connect_redis
from detector.schemas import Action, Decision, Scope
from detector.sinks.kafka import KafkaSink
from detector.startup import ensure_topics
from detector.windows.buckets import parse_duration_s


def _target(scope_text: str, tenant: str, entity: str) -> tuple[Scope, str]:
    try:
        scope = Scope(scope_text)
    except ValueError:
        choices = ", ".join(s.value for s in Scope if s is not Scope.global_)
        raise ConfigError(f"--scope must be one of {choices}, got {scope_text!r}") from None
    if scope is Scope.global_:
        raise ConfigError("--scope global cannot be overridden: there is no entity to stop")
    if not tenant:
        raise ConfigError("--tenant is required")
    if scope is Scope.tenant:
        return scope, tenant
    if not entity:
        raise ConfigError(f"--id is required for scope {scope.value}")
    return scope, entity


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def set_override(
    settings: Settings,
    action: Action,
    scope_text: str,
    tenant: str,
    entity: str,
    duration: str,
    reason: str,
) -> Decision:
    scope, entity_id = _target(scope_text, tenant, entity)
    try:
        duration_s = parse_duration_s(duration)
    except ValueError as exc:
        raise ConfigError(f"--for: {exc}") from None
    if duration_s <= 0:
        raise ConfigError(f"--for must be > 0s, got {duration!r}")
    now_ms = time.time_ns() // 1_000_000
    decision = manual_decision(
        tenant, scope, entity_id, action, duration_s, reason, actor(), now_ms
    )
    redis = connect_redis(settings)
    try:
        await DecisionStore(redis).override(decision, now_ms)
    finally:
        await redis.aclose()
    await _publish(settings, decision)
    return decision


async def lift(
    settings: Settings, scope_text: str, tenant: str, entity: str, reason: str
) -> list[Decision]:
    scope, entity_id = _target(scope_text, tenant, entity)
    record = lift_record(tenant, scope, entity_id, reason, actor(), time.time_ns() // 1_000_000)
    redis = connect_redis(settings)
    try:
        ended = await DecisionStore(redis).lift(record)
    finally:
        await redis.aclose()
    await _publish(settings, record)
    return ended


async def audit(settings: Settings, tenant: str, limit: int) -> list[Decision]:
    redis = connect_redis(settings)
    try:
        return await DecisionStore(redis).audit(tenant, limit)
    finally:
        await redis.aclose()


async def _publish(settings: Settings, decision: Decision) -> None:
    await ensure_topics(settings)
    kafka = KafkaSink(settings)
    await kafka.start()
    try:
        await kafka.send_decisions([decision])
    finally:
        await kafka.close()
