"""Read one window for the `spend` command."""

from __future__ import annotations

import time

from detector.config import Settings
from detector.errors import ConfigError
from detector.keys import GLOBAL_TENANT
from detector.redis_client import connect_redis
from detector.rules.loader import load_rules
from detector.schemas import Scope
from detector.windows.buckets import WINDOWS
from detector.windows.counters import WindowStore


async def read_spend(
    settings: Settings, scope_text: str, tenant: str, entity: str, window: str
) -> dict[str, object]:
    try:
        scope = Scope(scope_text)
    except ValueError:
        choices = ", ".join(s.value for s in Scope)
        raise ConfigError(f"--scope must be one of {choices}, got {scope_text!r}") from None
    if window not in WINDOWS:
        raise ConfigError(f"--window must be one of {', '.join(WINDOWS)}, got {window!r}")
    if scope is Scope.global_:
        tenant, entity = GLOBAL_TENANT, "all"
    elif not tenant:
        raise ConfigError("--tenant is required for this scope")
    elif scope is Scope.tenant:
        entity = tenant
    elif not entity:
        raise ConfigError(f"--id is required for scope {scope.value}")
    rules = load_rules(settings.rules)  # calendar windows follow the tenant's time zone
    zone = rules.zone(tenant) if scope is not Scope.global_ else None
    redis = connect_redis(settings)
    try:
        store = WindowStore(redis, settings.dedup_horizon_s)
        [metrics] = await store.read_windows(
            [(tenant, scope, entity, window)], time.time_ns() // 1_000_000, rules.zone
        )
    finally:
        await redis.aclose()
    return {
        "scope": scope.value,
        "tenant_id": tenant,
        "id": entity,
        "window": window,
        "time_zone": str(zone or "UTC"),
        "metrics": metrics,
    }
