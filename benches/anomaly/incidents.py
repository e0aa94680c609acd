"""Labelled spend incidents on realistic background traffic, through the live anomaly code.

    .venv/bin/python benches/anomaly/incidents.py [--days 3] [--tenants 12] [--seed 7]
        [--rules rules.yaml] [--data /work/shared/data]

Background: tenants with 4-25 users (Zipf activity), three features (chat on gpt-4o and
summarize on gpt-4o-mini with token sizes drawn from the Azure 2023 conversation trace, code on
claude-sonnet-4-5 with sizes from the Azure 2023 code trace), Poisson arrivals whose rate follows
BurstGPT's hourly request volume: its average day as the daily shape (each tenant shifted by up
to 8 hours, as time zones would), and its day-to-day level (days above 2.5x the median day, the
trace's API bursts, are left out since they are unlabelled anomalies of their own).

Incidents, each type on two tenants of its own, from the second day on (the first is warm-up):
- runaway: an agent loop in a new session, one 100k-token gpt-4o call a second (~$1K/hour), 45 min;
- leaked_key: an outsider uses one API key (no user) on claude-opus-4-5 at 5 calls/s, 60 min;
- viral: the chat feature at 10x its calls for 2 hours;
- model_switch: a gateway change routes every call of a tenant that runs all its features on
  gpt-4o-mini (200 calls/min) to gpt-4o, 16.7x dearer per token, for 3 hours;
- ramp: the whole tenant grows 20% a day, compounding, from day 1 to the end;
- huge_call: one call with 100k output tokens from a user whose calls cost cents.

Events are fed to `AnomalyWatch.observe_batch`, the code the worker calls after each batch, one
batch per minute of event time with the clock at the batch's end (as `rules backtest` does), so
the figures measure the product: rules.yaml's `anomaly:` section (the repository's by default),
model state and cooldowns in Redis. An alert detects an incident when it names the incident's
tenant (any scope within it) and its interval falls between the incident's first interval and
two intervals after its last; delay = that interval minus the incident's first, in intervals.
Every other alert is false. Redis: DETECTOR_BENCH_REDIS_URL (default redis://127.0.0.1:6379/2),
flushed before the run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from redis.asyncio import Redis

from detector.anomaly.watch import AnomalyWatch
from detector.decisions.store import DecisionStore
from detector.pricing import PriceTable, price_event
from detector.rules.loader import load_rules
from detector.schemas import Alert, Scope, UsageEvent
from detector.timefmt import parse_ts_ms
from detector.windows.counters import PricedEvent

ROOT = Path(__file__).resolve().parents[2]
MINUTE_MS = 60_000
DAY_MIN = 1440
START_MS = 1_793_491_200_000  # 2026-11-01T00:00Z
TYPES = ("runaway", "leaked_key", "viral", "model_switch", "ramp", "huge_call")
ABRUPT = ("runaway", "leaked_key", "viral", "model_switch", "huge_call")
FEATURES = (("chat", "gpt-4o", "conv", 0.5), ("code", "claude-sonnet-4-5", "code", 0.3),
            ("summarize", "gpt-4o-mini", "conv", 0.2))  # fmt: skip


@dataclass
class Traces:
    conv: list[tuple[int, int]]
    code: list[tuple[int, int]]
    shape: list[float]  # 24 hourly factors, mean 1
    day_levels: list[float]  # per day, median 1, burst days removed


def load_traces(data: Path) -> Traces:
    def tokens(name: str) -> list[tuple[int, int]]:
        with (data / "azure-llm-inference-2023" / name).open() as f:
            return [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(f)]

    by_hour: dict[int, list[float]] = defaultdict(list)
    by_day: dict[int, float] = defaultdict(float)
    with (data / "burstgpt" / "burstgpt1_hourly_requests_approx.csv").open() as f:
        for r in csv.DictReader(f):
            by_hour[int(r["hour_of_day"])].append(float(r["approx_requests"]))
            by_day[int(r["day"])] += float(r["approx_requests"])
    hourly = [statistics.fmean(by_hour[h]) for h in range(24)]
    mean = statistics.fmean(hourly)
    median_day = statistics.median(by_day.values())
    levels = [v / median_day for _, v in sorted(by_day.items()) if 0.2 < v / median_day <= 2.5]
    return Traces(
        tokens("AzureLLMInferenceTrace_conv.csv"),
        tokens("AzureLLMInferenceTrace_code.csv"),
        [h / mean for h in hourly],
        levels,
    )


@dataclass
class Tenant:
    name: str
    rate_per_min: float  # mean calls per minute over a day
    users: list[str]
    weights: list[float]
    shift_h: int
    day_offset: int
    growth_per_day: float = 0.0  # the ramp incident
    only_model: str | None = None  # every call on this model (the model_switch tenants)
    incident_type: str | None = None


@dataclass
class Incident:
    kind: str
    tenant: str
    start_min: int
    end_min: int  # exclusive
    user: str = ""
    found_delays: list[int] = field(default_factory=list)


@dataclass
class Scenario:
    tenants: list[Tenant]
    incidents: list[Incident]
    days: int


def build_scenario(n_tenants: int, days: int, seed: int, traces: Traces) -> Scenario:
    rng = random.Random(seed)
    tenants = []
    for i in range(n_tenants):
        n_users = rng.randint(4, 25)
        users = [f"t{i}-u{j}" for j in range(n_users)]
        weights = [1 / (j + 1) for j in range(n_users)]
        rate = math.exp(rng.uniform(math.log(10), math.log(100)))
        offset = rng.randrange(max(1, len(traces.day_levels) - days))
        tenants.append(Tenant(f"tenant-{i}", rate, users, weights, rng.randrange(9), offset))
    # Volume-driven incidents go to the busiest tenants, where they cost more than min spend.
    by_size = sorted(tenants, key=lambda t: -t.rate_per_min)
    order = ["viral", "model_switch", "viral", "model_switch", "runaway", "leaked_key",
             "huge_call", "ramp", "runaway", "leaked_key", "huge_call", "ramp"]  # fmt: skip
    for tenant, kind in zip(by_size, order * (len(tenants) // len(order) + 1), strict=False):
        tenant.incident_type = kind
        if kind == "model_switch":
            tenant.only_model, tenant.rate_per_min = "gpt-4o-mini", 200.0
    incidents = []
    length = {"runaway": 45, "leaked_key": 60, "viral": 120, "model_switch": 180, "huge_call": 1}
    for t in tenants:
        if t.incident_type is None:
            continue
        kind = t.incident_type
        if kind == "ramp":
            t.growth_per_day = 0.2
            incidents.append(Incident(kind, t.name, DAY_MIN, days * DAY_MIN))
            continue
        slots = max(1, (days - 1) * 3)  # three per incident day, at least 6 hours apart
        for k in range(slots):
            start = DAY_MIN + k * 480 + rng.randrange(60, 300)
            if start + length[kind] >= days * DAY_MIN:
                break
            user = t.users[-1] if kind == "huge_call" else t.users[rng.randrange(len(t.users))]
            incidents.append(Incident(kind, t.name, start, start + length[kind], user))
    return Scenario(tenants, incidents, days)


def rate_at(t: Tenant, traces: Traces, minute: int) -> float:
    """Calls per minute at this minute: daily shape (interpolated), day level, growth."""
    hour = (minute / 60 + t.shift_h) % 24
    h0 = int(hour)
    frac = hour - h0
    shape = traces.shape[h0] * (1 - frac) + traces.shape[(h0 + 1) % 24] * frac
    # The day's level, interpolated from one day's middle to the next so no step falls at midnight.
    days = traces.day_levels
    pos = minute / DAY_MIN - 0.5
    d0 = math.floor(pos)
    level0 = days[(t.day_offset + d0) % len(days)]
    level1 = days[(t.day_offset + d0 + 1) % len(days)]
    level = level0 + (level1 - level0) * (pos - d0)
    growth = (1 + t.growth_per_day) ** max(0.0, minute / DAY_MIN - 1) if t.growth_per_day else 1
    return t.rate_per_min * shape * level * growth


def minute_events(
    sc: Scenario, traces: Traces, minute: int, rng: np.random.Generator, seq: Iterator[int]
) -> list[UsageEvent]:
    out: list[UsageEvent] = []
    base_ms = START_MS + minute * MINUTE_MS
    active = {(i.tenant): i for i in sc.incidents if i.start_min <= minute < i.end_min}

    def call(t: Tenant, user: str | None, feature: str | None, model: str, tokens: tuple[int, int],
             key: str | None, session: str | None = None) -> None:  # fmt: skip
        out.append(
            UsageEvent.model_construct(
                event_id=f"e{next(seq)}",
                ts_ms=base_ms + int(rng.integers(0, MINUTE_MS)),
                tenant_id=t.name,
                user_id=user,
                feature=feature,
                api_key_id=key,
                session_id=session,
                model=model,
                provider=None,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                cached_input_tokens=0,
                reasoning_tokens=0,
                cache_creation_input_tokens=0,
                cost_usd=None,
                status="ok",
                latency_ms=None,
                tags={},
            )  # fmt: skip
        )

    for t in sc.tenants:
        incident = active.get(t.name)
        n = int(rng.poisson(rate_at(t, traces, minute)))
        users = rng.choice(len(t.users), size=n, p=np.array(t.weights) / sum(t.weights))
        feats = rng.choice(3, size=n, p=[f[3] for f in FEATURES])
        for u, fi in zip(users, feats, strict=True):
            feature, model, trace, _ = FEATURES[fi]
            sizes = traces.conv if trace == "conv" else traces.code
            tokens = sizes[int(rng.integers(len(sizes)))]
            if t.only_model is not None:
                model = t.only_model
                if incident is not None and incident.kind == "model_switch":
                    model = "gpt-4o"
            user = t.users[u]
            call(t, user, feature, model, tokens, f"k-{user}")
            if incident is not None and incident.kind == "viral" and feature == "chat":
                for _ in range(9):
                    other = t.users[int(rng.integers(len(t.users)))]
                    extra = traces.conv[int(rng.integers(len(traces.conv)))]
                    call(t, other, "chat", "gpt-4o", extra, f"k-{other}")
        if incident is None:
            continue
        if incident.kind == "runaway":
            for _ in range(60):
                call(t, incident.user, "agent", "gpt-4o", (100_000, 2_000), f"k-{incident.user}",
                     f"loop-{incident.start_min}")  # fmt: skip
        elif incident.kind == "leaked_key":
            for _ in range(300):
                tokens = traces.code[int(rng.integers(len(traces.code)))]
                call(t, None, None, "claude-opus-4-5", tokens, f"k-{t.users[0]}")
        elif incident.kind == "huge_call" and minute == incident.start_min:
            call(t, incident.user, "chat", "gpt-4o", (1_200, 100_000), f"k-{incident.user}")
    out.sort(key=lambda e: e.ts_ms)
    return out


def match(sc: Scenario, alerts: list[Alert], interval_min: int) -> list[Alert]:
    """Attribute alerts to incidents (recording delays); return the false ones."""
    false = []
    for a in alerts:
        ts = parse_ts_ms(a.event_time)
        at_min = (ts - START_MS) // MINUTE_MS
        if a.window != "call":
            at_min -= interval_min  # an interval alert carries its interval's end
        hit = False
        for inc in sc.incidents:
            if inc.tenant != a.tenant_id:
                continue
            first = inc.start_min - inc.start_min % interval_min
            if first <= at_min <= inc.end_min + 2 * interval_min:
                inc.found_delays.append((at_min - first) // interval_min)
                hit = True
        if not hit:
            false.append(a)
    return false


async def run(args: argparse.Namespace) -> int:
    traces = load_traces(args.data)
    sc = build_scenario(args.tenants, args.days, args.seed, traces)
    rules = load_rules(args.rules)
    section = rules.anomaly
    if section is None:
        print(f"{args.rules} has no anomaly section", file=sys.stderr)
        return 2
    redis = Redis.from_url(os.environ.get("DETECTOR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"))
    await redis.flushdb()
    watch = AnomalyWatch(redis, DecisionStore(redis))
    prices = PriceTable.load()
    rng = np.random.default_rng(args.seed)
    seq = iter(range(10**12))
    alerts: list[Alert] = []
    entities: set[tuple[str, Scope, str]] = set()
    events = 0
    spend_usd = 0.0
    gen_s = watch_s = 0.0
    for minute in range(args.days * DAY_MIN):
        t0 = time.perf_counter()
        made = minute_events(sc, traces, minute, rng, seq)
        batch = [PricedEvent(e, price_event(e, prices)) for e in made]
        for it in batch:
            ev = it.event
            for scope in section.scopes:
                entity = ev.entity(scope)
                if entity is not None:
                    entities.add((ev.tenant_id, scope, entity))
            spend_usd += it.costs.total_usd_micros / 1e6
        t1 = time.perf_counter()
        found = await watch.observe_batch(batch, rules, START_MS + (minute + 1) * MINUTE_MS)
        watch_s += time.perf_counter() - t1
        gen_s += t1 - t0
        alerts += found.alerts
        events += len(batch)
    found = await watch.flush(rules, START_MS + args.days * DAY_MIN * MINUTE_MS)
    alerts += found.alerts
    await redis.aclose()

    interval_min = max(1, section.interval_s // 60)
    false = match(sc, alerts, interval_min)
    scopes = ", ".join(s.value for s in section.scopes)
    print(
        f"# {events} events, ${spend_usd:,.0f} over {args.days} days, {len(sc.tenants)} "
        f"tenants, {len(entities)} modelled entities ({scopes}), {len(alerts)} alerts; watch "
        f"{watch_s:.1f}s ({watch_s / events * 1e6:.1f} us/event), traffic {gen_s:.1f}s"
    )
    print(f"# rules: {args.rules} (detector {section.detector}, sensitivity {section.sensitivity},"
          f" warmup {section.warmup}, min_spend_usd {section.min_spend_usd})")  # fmt: skip
    header = ("type", "incidents", "recall", "precision", "delay_p50", "delay_max",
              "alerts", "false", "false/entity-day")  # fmt: skip
    rows = [header]
    for kind in (*TYPES, "all"):
        chosen = [i for i in sc.incidents if kind in ("all", i.kind)]
        tenants = {i.tenant for i in chosen}
        if not chosen:
            continue
        found_n = sum(1 for i in chosen if i.found_delays)
        delays = sorted(min(i.found_delays) for i in chosen if i.found_delays)
        on_tenants = [a for a in alerts if a.tenant_id in tenants]
        false_here = [a for a in false if a.tenant_id in tenants]
        if kind == "all":
            on_tenants, false_here = alerts, false
            tenants = {t.name for t in sc.tenants}
        ents = sum(1 for e in entities if e[0] in tenants)
        precision = (len(on_tenants) - len(false_here)) / len(on_tenants) if on_tenants else 1.0
        rows.append((
            kind, str(len(chosen)), f"{found_n / len(chosen):.2f}", f"{precision:.2f}",
            f"{statistics.median(delays):.0f}" if delays else "-",
            f"{delays[-1]}" if delays else "-",
            str(len(on_tenants)), str(len(false_here)),
            f"{len(false_here) / max(1, ents) / args.days:.4f}",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    if args.show_false:
        for a in false[: args.show_false]:
            print(f"false: {a.event_time} {a.scope.value}:{a.entity_id} ({a.tenant_id}) "
                  f"{a.message[:160]}")  # fmt: skip
    for i in sc.incidents:
        if not i.found_delays and args.show_false:
            tenant = next(t for t in sc.tenants if t.name == i.tenant)
            hour = (i.start_min / 60 + tenant.shift_h) % 24
            print(f"missed: {i.kind} {i.tenant} minute {i.start_min} (local hour {hour:.0f}, "
                  f"{rate_at(tenant, traces, i.start_min):.0f} calls/min before it)")  # fmt: skip
    print(f"# stats: {watch.stats}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rules", type=Path, default=ROOT / "rules.yaml")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--show-false", type=int, default=0, help="print this many false alerts")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
