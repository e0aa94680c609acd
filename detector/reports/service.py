"""The `report` command's entry point: settings in, one rendered report out."""

from __future__ import annotations

from detector.config import Settings
from detector.errors import ConfigError
from detector.redis_client import connect_redis
from detector.reports.catalog import build_report, parse_query
from detector.reports.model import Report
from detector.reports.plans import Plans, load_plans
from detector.reports.reads import RollupReader
from detector.windows.counters import WindowStore


def plans_of(settings: Settings) -> Plans | None:
    """The validated plans file named by the settings, or None when there is none."""
    return None if settings.plans_file is None else load_plans(settings.plans_file)


async def report_for(
    settings: Settings, name: str, tenant: str, period: str, at: str, top: str, now_ms: int
) -> Report:
    """Run one report against the settings' Redis; bad input raises ConfigError naming the
    option."""
    try:
        query = parse_query(name, tenant, period, at, top, now_ms)
    except ValueError as exc:
        raise ConfigError(_as_option(str(exc))) from None
    plans = plans_of(settings)
    redis = connect_redis(settings)
    try:
        reader = RollupReader(redis, WindowStore(redis, settings.dedup_horizon_s))
        try:
            return await build_report(query, reader, plans)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    finally:
        await redis.aclose()


def _as_option(message: str) -> str:
    """API parameter names in a message, as the command's options.

    >>> _as_option("at: 2031-01-01 is in the future")
    '--at: 2031-01-01 is in the future'
    """
    for param, option in (("tenant_id", "--tenant"), ("report", "NAME"), ("period", "--period"),
                          ("at", "--at"), ("top", "--top")):  # fmt: skip
        if message.startswith(param):
            return option + message[len(param) :]
    return message
