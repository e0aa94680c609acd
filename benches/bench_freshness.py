"""Decision freshness: from a cost event produced to the changed answer visible in the lookup API.

    .venv/bin/python benches/bench_freshness.py [--rate 5000] [--probes 60]

Starts `python -m detector worker` and `python -m detector api` as subprocesses on their own
topics (`benchf-<uuid>.*`), Redis database 8 and a rules file with one rule: a tenant whose
cost_usd over 5m goes over $1 is blocked for 10 minutes. Then measures probes: every
`--interval-s` a fresh tenant `probe-<n>` is checked to answer allow, ONE event of $2 is
produced for it (aiokafka, linger 5 ms, keyed by tenant as a gateway would), and the bench polls
GET /v1/decision?tenant_id=probe-<n> every 5 ms on a keep-alive session until it answers block.
Freshness = send() to the first block answer. Probes run concurrently, each on its own schedule,
so a slow one does not delay the next.

Cases, one line each:
- decision_freshness_idle: the probes alone, no other traffic (the baseline).
- decision_freshness: the same probes while a separate process produces seeded background
  events (detector.simulate, ~200 tenants, event time = now, $0.00001 each so no tenant comes
  near the threshold) at `--rate` events/s; probes start after a `--warmup-s` warm-up.
  produced_eps = background events Kafka acknowledged per second over the probe phase;
  counted_eps = growth of the global scope's 1d `requests` window over the same time, i.e. what
  the worker got through. worker_kept_up=no when counted_eps is under 95% of produced_eps or the
  worker ended the phase more than one second of traffic behind (backlog_end, in events).
  ratio_p50 / ratio_p99 = loaded / idle.
Extras on both: pickup_p50_ms / pickup_p99_ms, from send() to the start of the worker batch
that decided (the decision's `until` minus the rule's 10 minutes, on the same clock), so
queueing in Kafka and in the worker is told apart from the rest (rules, Redis, pub/sub, API);
timeouts = probes never answered block within `--probe-timeout-s` (counted at that value);
polls_per_s = the bench's own lookup rate against the API during the phase.
With 60 probes, p99 by nearest rank is the slowest probe, the same as max_ms.

Needs `scripts/services up`. Uses Redis database 8 only (flushed at the start and the end) and
topics named benchf-<uuid>.*, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from common import delete_run_topics, free_port, percentile, run_settings, services_reachable
from redis.asyncio import Redis

from detector import keys
from detector.config import Settings
from detector.schemas import Scope
from detector.simulate import Scenario, generate
from detector.startup import ensure_topics
from detector.timefmt import parse_ts_ms
from detector.windows.counters import WindowStore
from detector.worker import now_ms

REPO = Path(__file__).resolve().parent.parent
REDIS_DB = 8
BLOCK_FOR_S = 600
RULES = f"""
version: 1
rules:
  - id: freshness-probe
    scope: tenant
    metric: cost_usd
    window: 5m
    threshold: 1.0
    action: block
    for: {BLOCK_FOR_S // 60}m
    severity: critical
"""
GOAL_P99_MS = 500.0
PROBE_COST_USD = 2.0
BACKGROUND_COST_USD = 0.00001  # 25 events/s per tenant for 5 min: $0.075, far below $1
POOL_EVENTS = 20_000  # seeded background events, cycled with fresh ids and times
LINGER_MS = 5
POLL_S = 0.005
LOAD_TICK_S = 0.005
READY_TIMEOUT_S = 60.0


# --- background load (runs in its own process) -----------------------------------------------


def background_pool(seed: int, tenants: int) -> list[tuple[bytes, dict[str, Any]]]:
    """Seeded background events (key, fields without id and time), built once (pure)."""
    scenario = Scenario(
        seed=seed,
        tenants=tenants,
        users_per_tenant=20,
        duration_s=POOL_EVENTS,
        rate_per_s=1.5,
        abuse_tenant=None,
    )
    pool = []
    for event in itertools.islice(generate(scenario, start_ms=0), POOL_EVENTS):
        del event["event_id"], event["ts"]
        event["cost_usd"] = BACKGROUND_COST_USD
        pool.append((event["tenant_id"].encode(), event))
    return pool


def load_process(
    bootstrap: str,
    topic: str,
    rate: float,
    seed: int,
    tenants: int,
    run_id: str,
    acked: Synchronized[int],
    stop: MpEvent,
) -> None:
    """Produce background events at `rate` per second until `stop`; `acked` counts Kafka acks."""
    asyncio.run(_load(bootstrap, topic, rate, background_pool(seed, tenants), run_id, acked, stop))


async def _load(
    bootstrap: str,
    topic: str,
    rate: float,
    pool: list[tuple[bytes, dict[str, Any]]],
    run_id: str,
    acked: Synchronized[int],
    stop: MpEvent,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=LINGER_MS)
    await producer.start()
    pending: deque[asyncio.Future[Any]] = deque()
    done = 0
    try:
        start = time.perf_counter()
        sent = 0
        while not stop.is_set():
            # Paced by the clock, not by sleeps: a late tick sends what it owes at once.
            due = int((time.perf_counter() - start) * rate)
            ts = now_ms()
            while sent < due:
                key, fields = pool[sent % len(pool)]
                value = orjson.dumps({**fields, "event_id": f"bg-{run_id}-{sent}", "ts": ts})
                pending.append(await producer.send(topic, value=value, key=key))
                sent += 1
            while pending and pending[0].done():
                pending.popleft().result()  # a failed send ends the load loudly
                done += 1
            acked.value = done
            await asyncio.sleep(LOAD_TICK_S)
        for future in pending:
            await future
        acked.value = done + len(pending)
    finally:
        await producer.stop()


# --- processes under test ----------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def cpu_s(self) -> float:
        """User + system CPU the process has used so far."""
        return proc_cpu_s(self.proc.pid)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_proc(name: str, settings: Settings, log_dir: Path, **extra: str) -> Proc:
    # only these settings: a DETECTOR_* variable in the caller's shell must not leak in
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    for field, value in settings.model_dump().items():
        if value is not None:
            env[f"DETECTOR_{field.upper()}"] = str(value)
    env.update(extra)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "detector", name],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Proc(name, proc, log_path)


def stop_procs(procs: Sequence[Proc]) -> None:
    for p in procs:
        if p.proc.poll() is None:
            # faust shuts down on SIGTERM, aiohttp's run_app on SIGINT
            p.proc.send_signal(signal.SIGTERM if p.name == "worker" else signal.SIGINT)
    for p in procs:
        try:
            p.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()


def check_alive(procs: Sequence[Proc]) -> None:
    for p in procs:
        if p.proc.poll() is not None:
            raise SystemExit(f"{p.name} exited with {p.proc.returncode}:\n{p.log_tail()}")


# --- probes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    freshness_s: float  # send() to the first block answer, or the timeout
    pickup_s: float | None  # send() to the start of the worker batch that decided
    timed_out: bool


@dataclass
class Prober:
    """Sends probe events and watches the API until each one's tenant is blocked."""

    http: aiohttp.ClientSession
    producer: AIOKafkaProducer
    base_url: str
    topic: str
    run_id: str
    timeout_s: float
    procs: Sequence[Proc]
    next_n: int = 0
    polls: int = 0

    async def action(self, tenant: str) -> tuple[str, dict[str, Any]]:
        url = f"{self.base_url}/v1/decision"
        self.polls += 1
        async with self.http.get(url, params={"tenant_id": tenant}) as resp:
            body: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise SystemExit(f"GET /v1/decision?tenant_id={tenant} -> {resp.status} {body}")
        return str(body["action"]), body

    async def probe(self, name: str = "probe") -> Probe:
        tenant = f"{name}-{self.next_n}"
        self.next_n += 1
        action, body = await self.action(tenant)
        if action != "allow":
            raise SystemExit(f"fresh tenant {tenant} answers {action}, not allow: {body}")
        value = orjson.dumps(
            {
                "event_id": f"{name}-{self.run_id}-{tenant}",
                "ts": now_ms(),
                "tenant_id": tenant,
                "model": "gpt-4o",
                "input_tokens": 1000,
                "output_tokens": 200,
                "cost_usd": PROBE_COST_USD,
            }
        )
        sent_wall_ms = time.time_ns() / 1e6
        sent = time.perf_counter()
        await self.producer.send(self.topic, value=value, key=tenant.encode())
        while True:
            action, body = await self.action(tenant)
            elapsed_s = time.perf_counter() - sent
            if action == "block":
                until_ms = parse_ts_ms(body["reasons"][0]["until"])
                pickup_s = (until_ms - BLOCK_FOR_S * 1000 - sent_wall_ms) / 1000
                return Probe(elapsed_s, pickup_s, timed_out=False)
            if elapsed_s > self.timeout_s:
                return Probe(self.timeout_s, None, timed_out=True)
            await asyncio.sleep(POLL_S)

    async def run(self, count: int, interval_s: float) -> list[Probe]:
        """`count` probes started every `interval_s`, concurrently."""
        tasks: list[asyncio.Task[Probe]] = []
        start = time.perf_counter()
        try:
            for i in range(count):
                check_alive(self.procs)
                delay_s = start + i * interval_s - time.perf_counter()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
                tasks.append(asyncio.create_task(self.probe()))
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()


def probe_fields(probes: Sequence[Probe]) -> dict[str, float]:
    fresh_ms = sorted(p.freshness_s * 1000 for p in probes)
    pickup_ms = sorted(p.pickup_s * 1000 for p in probes if p.pickup_s is not None)
    return {
        "p50_ms": percentile(fresh_ms, 50),
        "p99_ms": percentile(fresh_ms, 99),
        "max_ms": fresh_ms[-1],
        "pickup_p50_ms": percentile(pickup_ms, 50),
        "pickup_p99_ms": percentile(pickup_ms, 99),
        "timeouts": sum(p.timed_out for p in probes),
    }


def fmt_line(fields: dict[str, object]) -> str:
    out = []
    for name, value in fields.items():
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        out.append(f"{name}={text}")
    return " ".join(out)


def met(stats: dict[str, float]) -> str:
    return "yes" if stats["p99_ms"] < GOAL_P99_MS and not stats["timeouts"] else "no"


# --- the bench ---------------------------------------------------------------------------------


async def counted_events(windows: WindowStore) -> int:
    """Events counted so far, as the global scope's 1d window sees them."""
    [sums] = await windows.read_windows(
        [(keys.GLOBAL_TENANT, Scope.global_, "all", "1d")], now_ms()
    )
    return int(sums["requests"])


async def wait_api(http: aiohttp.ClientSession, base_url: str, procs: Sequence[Proc]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        check_alive(procs)
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(f"{base_url}/readyz") as resp:
                if resp.status == 200:
                    return
        if time.monotonic() > deadline:
            raise SystemExit(f"the API did not answer within {READY_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.1)


async def bench(args: argparse.Namespace, settings: Settings, run_id: str, log_dir: Path) -> None:
    topic = settings.topic(keys.TOPIC_EVENTS)
    redis = Redis.from_url(settings.redis_url)
    windows = WindowStore(redis, settings.dedup_horizon_s)
    procs: list[Proc] = []
    ctx = multiprocessing.get_context("spawn")
    acked: Synchronized[int] = ctx.Value("q", 0)
    stop = ctx.Event()
    loader = ctx.Process(
        target=load_process,
        args=(settings.kafka_bootstrap, topic, args.rate, args.seed, args.tenants, run_id),
        kwargs={"acked": acked, "stop": stop},
        name="bench_freshness-load",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=LINGER_MS
    )
    producer_started = False
    try:
        await redis.flushdb()
        await ensure_topics(settings)
        port = free_port()
        procs.append(start_proc("worker", settings, log_dir))
        procs.append(start_proc("api", settings, log_dir, DETECTOR_API_PORT=str(port)))
        base_url = f"http://127.0.0.1:{port}"
        await producer.start()
        producer_started = True
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            await wait_api(http, base_url, procs)
            prober = Prober(
                http, producer, base_url, topic, run_id, READY_TIMEOUT_S, procs, next_n=0
            )
            # The first probe waits out the group join and warms every path (rules, decisions,
            # pub/sub, the API cache); it is not measured.
            first = await prober.probe("warmup")
            if first.timed_out:
                check_alive(procs)
                raise SystemExit(f"no block within {READY_TIMEOUT_S:.0f} s:\n{procs[0].log_tail()}")
            prober.timeout_s = args.probe_timeout_s
            prober.next_n = 0

            polls0, t0 = prober.polls, time.perf_counter()
            idle = probe_fields(await prober.run(args.probes, args.interval_s))
            idle_polls_per_s = (prober.polls - polls0) / (time.perf_counter() - t0)
            print(
                fmt_line(
                    {
                        "case": "decision_freshness_idle",
                        "target_eps": 0,
                        "produced_eps": 0,
                        "counted_eps": 0,
                        "n": args.probes,
                        **{k: idle[k] for k in ("p50_ms", "p99_ms", "max_ms")},
                        "goal_p99_ms": int(GOAL_P99_MS),
                        "met": met(idle),
                        **{k: idle[k] for k in ("pickup_p50_ms", "pickup_p99_ms", "timeouts")},
                        "polls_per_s": round(idle_polls_per_s),
                    }
                ),
                flush=True,
            )

            loader.start()
            await asyncio.sleep(args.warmup_s)
            if not loader.is_alive() or loader.pid is None:
                raise SystemExit(f"the load process exited with {loader.exitcode}")
            load_pid = loader.pid
            extra0 = prober.next_n + 1  # probe and warm-up events counted besides the load
            produced0, counted0 = acked.value, await counted_events(windows)
            cpu0 = [p.cpu_s() for p in procs] + [proc_cpu_s(load_pid)]
            polls0, t0 = prober.polls, time.perf_counter()
            loaded = probe_fields(await prober.run(args.probes, args.interval_s))
            produced1, counted1 = acked.value, await counted_events(windows)
            elapsed_s = time.perf_counter() - t0
            cpu1 = [p.cpu_s() for p in procs] + [proc_cpu_s(load_pid)]
            used = [(b - a) / elapsed_s for a, b in zip(cpu0, cpu1, strict=True)]
            worker_cpu, api_cpu, load_cpu = used
            extra1 = extra0 + args.probes
            stop.set()
            loader.join(timeout=30)
            if loader.exitcode != 0:
                raise SystemExit(f"the load process failed (exit code {loader.exitcode})")

        produced_eps = (produced1 - produced0) / elapsed_s
        counted_eps = (counted1 - counted0 - (extra1 - extra0)) / elapsed_s
        backlog_end = max(0, produced1 + extra1 - counted1)
        kept_up = counted_eps >= 0.95 * produced_eps and backlog_end <= args.rate
        print(
            fmt_line(
                {
                    "case": "decision_freshness",
                    "target_eps": f"{args.rate:g}",
                    "produced_eps": round(produced_eps),
                    "counted_eps": round(counted_eps),
                    "n": args.probes,
                    **{k: loaded[k] for k in ("p50_ms", "p99_ms", "max_ms")},
                    "goal_p99_ms": int(GOAL_P99_MS),
                    "met": met(loaded),
                    "worker_kept_up": "yes" if kept_up else "no",
                    "backlog_end": backlog_end,
                    **{k: loaded[k] for k in ("pickup_p50_ms", "pickup_p99_ms", "timeouts")},
                    "idle_p50_ms": idle["p50_ms"],
                    "idle_p99_ms": idle["p99_ms"],
                    "ratio_p50": f"{loaded['p50_ms'] / idle['p50_ms']:.2f}x",
                    "ratio_p99": f"{loaded['p99_ms'] / idle['p99_ms']:.2f}x",
                    "polls_per_s": round((prober.polls - polls0) / elapsed_s),
                    "worker_cpu": f"{worker_cpu:.2f}",
                    "api_cpu": f"{api_cpu:.2f}",
                    "load_cpu": f"{load_cpu:.2f}",
                    "phase_s": elapsed_s,
                }
            ),
            flush=True,
        )
        if produced_eps < 0.98 * args.rate:
            print(
                f"note: the load process produced {produced_eps:.0f} events/s, under 98% of the "
                f"{args.rate:g} target: it shares {os.cpu_count()} cores with Kafka, Redis, the "
                "worker and the API",
                flush=True,
            )
    finally:
        stop.set()
        if loader.pid is not None:
            loader.join(timeout=10)
            if loader.is_alive():
                loader.kill()
                loader.join()
        if producer_started:
            await producer.stop()
        stop_procs(procs)
        await redis.flushdb()
        await redis.aclose()
        await delete_run_topics(settings.kafka_bootstrap, f"benchf-{run_id}")


async def main(args: argparse.Namespace) -> int:
    probe_client = Redis.from_url(args.redis_url)
    db = probe_client.connection_pool.connection_kwargs.get("db")
    await probe_client.aclose()
    if db != REDIS_DB:
        print(f"bench_freshness: --redis-url must name database {REDIS_DB}", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp:
        tmp_path = Path(tmp)
        rules_path = tmp_path / "rules.yaml"
        rules_path.write_text(RULES)
        settings = run_settings(
            args.kafka, args.redis_url, f"benchf-{run_id}", tmp_path / "data"
        ).model_copy(
            update={
                "rules": rules_path,
                "batch_max_wait_ms": args.batch_max_wait_ms,
                "log_level": "INFO",
            }
        )
        if not await services_reachable(settings, "bench_freshness"):
            return 1
        started = time.perf_counter()
        await bench(args, settings, run_id, tmp_path)
        print(f"# run took {time.perf_counter() - started:.0f} s, cpus={os.cpu_count()}")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=5000.0, help="background events/s")
    parser.add_argument("--probes", type=int, default=60, help="probes per case")
    parser.add_argument("--interval-s", type=float, default=0.5, help="between probe starts")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="load before probing")
    parser.add_argument("--probe-timeout-s", type=float, default=20.0, help="give up on a probe")
    parser.add_argument("--tenants", type=int, default=200, help="background tenants")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--batch-max-wait-ms", type=int, default=200, help="the worker's DETECTOR_BATCH_MAX_WAIT_MS"
    )
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--redis-url", default=f"redis://127.0.0.1:6379/{REDIS_DB}")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
