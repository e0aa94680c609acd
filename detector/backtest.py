"""`detector rules backtest`: replay recorded events through the worker's own pipeline.

Events are sorted by event time and fed to `pipeline.handle_batch` in slices of one second of
event time, with the clock set to each slice's newest event, so windows, rules, cooldowns and
decision expiries behave as they would have live. Windows live in a scratch Redis database
(DETECTOR_REDIS_URL with database 14, flushed before and after); Kafka is not needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from detector.anomaly.watch import AnomalyWatch
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.errors import BadEvent, ConfigError
from detector.pipeline import Deps, handle_batch
from detector.pricing import PriceTable
from detector.redis_client import connect_redis
from detector.rules.holder import RulesHolder
from detector.schemas import Alert, Decision
from detector.timefmt import parse_ts_ms
from detector.windows.counters import WindowStore

BACKTEST_REDIS_DB = 14
SLICE_MS = 1000
MAX_SLICE_EVENTS = 2000


@dataclass
class Collected:
    """Everything the pipeline published during a replay."""

    alerts: list[Alert] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)

    async def send_dead_letters(
        self, items: Sequence[tuple[bytes | None, bytes, BadEvent]]
    ) -> None:
        self.dead_letters.update(error.reason for _, _, error in items)

    async def send_decisions(self, decisions: Sequence[Decision]) -> None:
        self.decisions.extend(decisions)

    async def send_alerts(self, alerts: Sequence[Alert]) -> None:
        self.alerts.extend(alerts)


@dataclass
class BacktestResult:
    events: int
    applied: int
    duplicates: int
    late: int
    collected: Collected

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "late": self.late,
            "dead_letters": dict(self.collected.dead_letters),
            "alerts": [a.model_dump(mode="json") for a in self.collected.alerts],
            "decisions": [
                d.model_dump(mode="json", exclude={"until_ms"}) for d in self.collected.decisions
            ],
        }


def scratch_redis_url(url: str) -> str:
    """The same Redis, database 14.

    >>> scratch_redis_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/14'
    """
    base, _, last = url.rpartition("/")
    if last.isdigit() and base.count("/") >= 2:
        return f"{base}/{BACKTEST_REDIS_DB}"
    return f"{url.rstrip('/')}/{BACKTEST_REDIS_DB}"


def event_time_ms(line: bytes) -> int | None:
    """Event time of a JSONL line, or None when it has none (it will be dead-lettered)."""
    try:
        data = orjson.loads(line)
        return parse_ts_ms(data["ts"]) if isinstance(data, dict) and "ts" in data else None
    except (orjson.JSONDecodeError, ValueError, OverflowError, TypeError):
        return None


def slices(lines: Sequence[bytes]) -> list[tuple[int, list[bytes]]]:
    """Lines in event-time order, cut into (clock, lines) slices of one second of event time.

    Lines without a usable time go with the first slice, where decoding rejects them.

    >>> [(t, len(s)) for t, s in slices([b'{"ts": 2.5}', b'{"ts": 1.2}', b'x', b'{"ts": 1.9}'])]
    [(1900, 3), (2500, 1)]
    """
    timed = sorted(
        ((event_time_ms(line), i, line) for i, line in enumerate(lines)),
        key=lambda item: (item[0] if item[0] is not None else -1, item[1]),
    )
    out: list[tuple[int, list[bytes]]] = []
    current: list[bytes] = []
    slice_end_ms: int | None = None
    clock_ms = 0
    for ts_ms, _, line in timed:
        if ts_ms is not None and (
            slice_end_ms is None or ts_ms >= slice_end_ms or len(current) >= MAX_SLICE_EVENTS
        ):
            if current and slice_end_ms is not None:
                out.append((clock_ms, current))
                current = []
            slice_end_ms = ts_ms - ts_ms % SLICE_MS + SLICE_MS
        current.append(line)
        if ts_ms is not None:
            clock_ms = ts_ms
    if current:
        out.append((clock_ms, current))
    return out


async def run_backtest(
    settings: Settings, rules_path: Path, lines: Sequence[bytes]
) -> BacktestResult:
    """Replay `lines` through the pipeline with the rules in `rules_path`."""
    if settings.redis_cluster:
        raise ConfigError(
            "rules backtest replays into a scratch database "
            f"({BACKTEST_REDIS_DB}) that it empties first, and a Redis Cluster has only "
            "database 0: run it with DETECTOR_REDIS_CLUSTER unset and DETECTOR_REDIS_URL "
            "pointing at a single Redis server"
        )
    rules = RulesHolder(rules_path)
    redis = connect_redis(
        settings.model_copy(update={"redis_url": scratch_redis_url(settings.redis_url)})
    )
    await redis.flushdb()
    collected = Collected()
    decisions = DecisionStore(redis)
    anomaly = AnomalyWatch(redis, decisions)
    deps = Deps(
        settings=settings,
        rules=rules,
        prices=PriceTable.load(settings.prices_file),
        windows=WindowStore(redis, settings.dedup_horizon_s, settings.allowed_lateness_s),
        decisions=decisions,
        kafka=collected,
        anomaly=anomaly,
    )
    applied = duplicates = late = 0
    clock_ms = 0
    try:
        for clock_ms, chunk in slices(lines):
            result = await handle_batch([(None, line) for line in chunk], deps, clock_ms)
            applied += result.applied
            duplicates += result.duplicates
            late += result.late
        # The last intervals close at the end of the recording, as they would have live.
        found = await anomaly.flush(rules(), clock_ms)
        await collected.send_alerts(found.alerts)
        await collected.send_decisions(found.decisions)
    finally:
        await redis.flushdb()
        await redis.aclose()
    return BacktestResult(len(lines), applied, duplicates, late, collected)


def render_table(result: BacktestResult) -> str:
    """What fired, when (event time), and the figures, one line per alert."""
    rows = [("event time", "kind", "rule", "severity", "entity", "figure", "action")]
    for a in result.collected.alerts:
        limit = f"{a.threshold:g}" if a.threshold is not None else "-"
        action = a.action.value + (" (shadow)" if a.shadow else "")
        rows.append(
            (
                a.event_time,
                a.kind.value,
                a.rule_id,
                a.severity.value,
                f"{a.scope.value}:{a.entity_id}",
                f"{a.metric}/{a.window} {a.observed:g} vs {limit}",
                action,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    dead = ", ".join(f"{k}={v}" for k, v in sorted(result.collected.dead_letters.items()))
    lines.append(
        f"{result.events} events: {result.applied} counted, {result.duplicates} duplicates, "
        f"{result.late} late, dead letters: {dead or 'none'}; "
        f"{len(result.collected.alerts)} alerts, {len(result.collected.decisions)} decisions"
    )
    return "\n".join(lines)
