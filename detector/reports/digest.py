"""The daily and weekly Slack digests: the reports' numbers for all tenants, sent once per
period however many workers run.

Each worker checks on a timer whether the last finished day (week) has had its digest. The
first to `SET NX` the period's claim key in Redis builds and sends it; the claim is a lease, so
a worker that dies while sending leaves it to expire and another one sends the digest later.
Once Slack has taken the message the claim becomes a long-lived `sent` marker.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from detector import keys
from detector.config import Settings
from detector.errors import SinkError
from detector.redis_client import RedisClient, connect_redis
from detector.reports.attribution import (
    cost_by_feature,
    cost_by_model,
    cost_per_user,
    top_spenders,
)
from detector.reports.deltas import week_over_week
from detector.reports.economics import margins
from detector.reports.model import Cell, Query, Report
from detector.reports.periods import DAY_MS, Period, PeriodKind, period_at
from detector.reports.plans import Plans
from detector.reports.reads import RollupReader
from detector.reports.service import plans_of
from detector.schemas import Action, Alert, AlertKind, Scope, Severity
from detector.sinks.base import Sink
from detector.sinks.slack import RetryableSinkError, make_sink
from detector.timefmt import rfc3339
from detector.windows.counters import WindowStore

log = logging.getLogger(__name__)

DIGEST_KINDS = {"daily": PeriodKind.day, "weekly": PeriodKind.week}
CLAIM_LEASE_MS = 5 * 60_000  # longer than a send with its retries can take
SENT_KEEP_MS = 40 * DAY_MS
SEND_ATTEMPTS = 3
DIGEST_TOP = 5
# Ids are up to 256 characters; nine lines of at most this many stay under Slack's 3,000.
MAX_LINE_CHARS = 300


def due_period(kind: PeriodKind, now_ms: int, delay_s: int) -> Period:
    """The last period of `kind` that ended at least `delay_s` before now_ms.

    >>> p = due_period(PeriodKind.day, 86_400_000 * 10 + 600_000, 900)  # 00:10, 15 min delay
    >>> p.start_ms // 86_400_000
    8
    """
    cutoff_ms = now_ms - delay_s * 1000
    current = period_at(kind, cutoff_ms, cutoff_ms)
    return period_at(kind, current.start_ms - DAY_MS, now_ms)


@dataclass(frozen=True, slots=True)
class Digest:
    kind: str
    period: Period
    total_usd: float
    text: str
    top_tenants: list[dict[str, str | float]]


async def build_digest(
    kind: str, period: Period, reader: RollupReader, plans: Plans | None, now_ms: int
) -> Digest:
    """The digest of one period over all tenants, from the same report functions."""

    def query(name: str, at: Period = period) -> Query:
        return Query(name, None, at, DIGEST_TOP, now_ms)

    users = await cost_per_user(query("cost-per-user"), reader)
    deltas = await week_over_week(query("week-over-week"), reader)
    top = await top_spenders(query("top-spenders"), reader)
    models = await cost_by_model(query("cost-by-model"), reader)
    features = await cost_by_feature(query("cost-by-feature"), reader)
    t, [total] = users.totals, [r for r in deltas.rows if r["dimension"] == "total"]
    title = "Daily" if kind == "daily" else "Weekly"
    lines = [
        f"*{title} spend digest, {period.label()}*, all tenants (UTC)",
        f"Total {_usd(t['cost_usd'])}, {_change(total)} vs {_label(deltas.compared_with)}; "
        f"{t['requests']:,} requests, {t['active_users']:,} active users, "
        f"{_usd(t['cost_per_active_user_usd'])} per active user",
        "*Top tenants:* " + _list(top, "tenant", lambda r: f"{r['entity_id']} "
                                  f"{_usd(r['cost_usd'])} ({r['share_pct']}%)"),
        "*Top users:* " + _list(top, "user", lambda r: f"{r['tenant_id']}/{r['entity_id']} "
                                f"{_usd(r['cost_usd'])}"),
        "*Models (input / output):* " + ", ".join(
            f"{r['model']} {_usd(r['cost_usd'])} ({_usd(r['input_cost_usd'])} / "
            f"{_usd(r['output_cost_usd'])})" for r in models.rows[:DIGEST_TOP]
        ),
        "*Features:* " + ", ".join(
            f"{r['feature']} {_usd(r['cost_usd'])}" for r in features.rows[:DIGEST_TOP]
        ),
        "*Biggest changes:* " + "; ".join(
            f"{r['dimension']} {r['entity_id']} {_change(r)}"
            for r in sorted((r for r in deltas.rows if r["dimension"] != "total"),
                            key=lambda r: -abs(_num(r["delta_usd"])))[:DIGEST_TOP]
        ),
    ]  # fmt: skip
    if plans is not None:
        month = period_at(PeriodKind.month, period.through_ms, now_ms)
        economics = await margins(query("margins", month), reader, plans)
        flagged = [r for r in economics.rows if r["level"] == "tenant"
                   and r["status"] == "unprofitable"]  # fmt: skip
        basis = "actual" if month.complete else "projected to its end"
        lines.append(
            f"*Unprofitable tenants ({month.label()}, {basis}):* "
            + (", ".join(f"{r['tenant_id']} margin {_usd(r['margin_usd'])}" for r in flagged)
               or "none")
        )  # fmt: skip
    tenants: list[dict[str, str | float]] = [
        {"tenant_id": str(r["entity_id"]), "cost_usd": _num(r["cost_usd"])}
        for r in top.rows
        if r["dimension"] == "tenant"
    ]
    return Digest(kind, period, _num(t["cost_usd"]), fit(lines), tenants)


def fit(lines: list[str]) -> str:
    """The lines as one text that fits a Slack section (3,000 characters), with room for the
    sink's prefix and escaping; each line is cut at MAX_LINE_CHARS.

    >>> [len(line) for line in fit(["a" * 500, "b"]).splitlines()]
    [300, 1]
    """
    cut = [line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "\u2026"
           for line in lines]  # fmt: skip
    return "\n".join(cut)


def _label(period: Period | None) -> str:
    return "-" if period is None else period.label()


def _num(value: Cell) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _usd(value: Cell) -> str:
    """Dollars for a digest line.

    >>> _usd(-25.061), _usd(1234.5), _usd(None)
    ('-$25.06', '$1,234.50', '-')
    """
    if value is None:
        return "-"
    amount = _num(value)
    return f"{'-' if amount < 0 else ''}${abs(amount):,.2f}"


def _change(row: dict[str, Cell]) -> str:
    delta = _num(row["delta_usd"])
    share = "" if row["delta_pct"] is None else f" ({_num(row['delta_pct']):+.1f}%)"
    return f"{'+' if delta >= 0 else ''}{_usd(delta)}{share}"


def _list(report: Report, dimension: str, show: Callable[[dict[str, Cell]], str]) -> str:
    rows = [r for r in report.rows if r["dimension"] == dimension]
    return ", ".join(str(show(r)) for r in rows) or "none"


def digest_alert(digest: Digest, now_ms: int) -> Alert:
    """The digest as the Slack sink's message type."""
    return Alert(
        alert_id=f"digest:{digest.kind}:{digest.period.start_ms}",
        kind=AlertKind.digest,
        rule_id=f"{digest.kind}-digest",
        severity=Severity.info,
        tenant_id="all",
        scope=Scope.global_,
        entity_id="all",
        window=digest.period.kind.value,
        metric="cost_usd",
        observed=digest.total_usd,
        contributors=list(digest.top_tenants),
        action=Action.alert,
        event_time=rfc3339(digest.period.end_ms),
        created_at=rfc3339(now_ms),
        message=digest.text,
    )


async def preview_digest(settings: Settings, kind: str, at: str, now_ms: int) -> str:
    """The text of a digest without sending it: the one due now, or the period holding `at`."""
    from detector.errors import ConfigError
    from detector.reports.periods import resolve_period

    if kind not in DIGEST_KINDS:
        raise ConfigError(f"KIND must be daily or weekly, got {kind!r}")
    period = due_period(DIGEST_KINDS[kind], now_ms, settings.digest_delay_s)
    if at:
        try:
            period = resolve_period(DIGEST_KINDS[kind].value, at, now_ms)
        except ValueError as exc:
            raise ConfigError(f"--{exc}") from None
    plans = plans_of(settings)
    redis = connect_redis(settings)
    try:
        reader = RollupReader(redis, WindowStore(redis, settings.dedup_horizon_s))
        return (await build_digest(kind, period, reader, plans, now_ms)).text
    finally:
        await redis.aclose()


class DigestSender:
    """Sends each due digest once across all workers; `tick` is called on the worker's timer."""

    def __init__(self, settings: Settings, sink: Sink | None = None) -> None:
        self._settings = settings
        self._plans = plans_of(settings)  # a bad plans file stops the worker at start
        self._kinds = [k for k in settings.digests.split(",") if k]
        self._sink = sink
        self._redis: RedisClient | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._kinds)

    async def tick(self, now_ms: int) -> list[str]:
        """Send whatever digest is due and unclaimed; returns the kinds this call sent."""
        if self._redis is None:
            self._redis = connect_redis(self._settings)
        if self._sink is None:
            self._sink = make_sink(self._settings)
        sent = []
        for kind in self._kinds:
            period = due_period(DIGEST_KINDS[kind], now_ms, self._settings.digest_delay_s)
            key = keys.digest_claim_key(kind, period.start_ms)
            token = uuid.uuid4().hex
            if not await self._redis.set(key, f"sending:{token}", nx=True, px=CLAIM_LEASE_MS):
                continue
            reader = RollupReader(
                self._redis, WindowStore(self._redis, self._settings.dedup_horizon_s)
            )
            digest = await build_digest(kind, period, reader, self._plans, now_ms)
            if not await self._send(digest_alert(digest, now_ms)):
                continue  # the lease expires and a later check tries again
            await self._redis.set(key, f"sent:{token}", px=SENT_KEEP_MS)
            sent.append(kind)
            log.info("sent the %s digest of %s", kind, period.label())
        return sent

    async def _send(self, alert: Alert) -> bool:
        """Deliver with a few quick retries; False leaves it to a later check."""
        assert self._sink is not None
        for attempt in range(SEND_ATTEMPTS):
            try:
                await self._sink.send_alert(alert)
                return True
            except RetryableSinkError as exc:
                wait_s = min(exc.retry_after_s or 2.0**attempt, 30.0)
                log.warning("digest %s not delivered (%s); retrying in %.0fs", alert.alert_id,
                            exc, wait_s)  # fmt: skip
                await asyncio.sleep(wait_s)
            except SinkError as exc:
                # Unreachable, or refused (bad channel or token): try again after the lease.
                log.error("digest %s not delivered: %s; retrying in %ds", alert.alert_id, exc,
                          CLAIM_LEASE_MS // 1000)  # fmt: skip
                return False
        return False

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        if self._sink is not None:
            await self._sink.close()
