"""The lookup API under HTTP load, against the floor for any aiohttp + Redis endpoint (loopback).

    .venv/bin/python benches/bench_api.py [--duration-s 10] [--conns 64] [--rate 2000]

Three servers run as separate processes, started by this script: `python -m detector api` with
its in-process decision cache (the default, DETECTOR_API_CACHE_MAX_AGE_S=10), the same with the
cache off (=0), and benches/minimal_app.py, which does one Redis GET per request and answers a
constant JSON (the baseline). Redis database 11 holds block decisions for 1% of 10,000 users
(100 tenants x 100 users). Every request names a tenant and a user drawn uniformly.

Cases, one line each:
- decision_cached_vs_minimal_get, decision_uncached_vs_minimal_get: closed loop, `--conns`
  keep-alive connections for `--duration-s` after a `--warmup-s` warm-up, one server at a time,
  driven by wrk (or, without wrk, by this script's own generator). ratio = cand_rps / base_rps,
  the share of the floor's throughput the API keeps. *_cpu_us = server CPU per request.
- decision_cached_at_<rate>rps, decision_uncached_at_<rate>rps: open loop at a fixed rate (wrk2
  is not in Debian, so this script generates it in a separate process). Requests are scheduled
  every 1/rate s over `--conns` connections; latency runs from the scheduled send time to the
  end of the response, so a stalled server is charged for the requests queued behind it.
  base_* is minimal_app at the same rate. gen_lag_p99_ms is how late the generator itself
  sent: it is part of every latency, and when it is large the figures say more about the
  generator than about the server.

Checks once, before loading, that a blocked user gets "block" and another user "allow" from both
API servers (exits 1 if not), and prints whether any non-2xx answer or socket error occurred.
Uses Redis database 11 only and flushes it at the start and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from common import free_port, percentile
from redis.asyncio import Redis

from detector.decisions.store import DecisionStore
from detector.schemas import Action, Decision, Scope
from detector.timefmt import rfc3339

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/11"
REDIS_DB = 11
TENANTS = 100
USERS = 100  # per tenant: 10,000 (tenant, user) entities in all
BLOCKED = 100  # 1% of them
BLOCK_S = 3600
DECISION_PREFIX = "/v1/decision?tenant_id=t"
MINIMAL_PREFIX = "/get?tenant_id=t"
READY_TIMEOUT_S = 30.0
P99_GOAL_MS = 2.0

WRK_LUA = """
local prefix, tenants, users
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function init(args)
  prefix, tenants, users = args[1], tonumber(args[2]), tonumber(args[3])
  math.randomseed(tonumber(args[4]) + 7919 * thread_id)
end

function request()
  local t = math.random(0, tenants - 1)
  local u = math.random(0, users - 1)
  return wrk.format(nil, prefix .. t .. "&user_id=u" .. u)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk_result requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f p999_us=%.1f " ..
    "non2xx=%d connect=%d read=%d write=%d timeout=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), e.status, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass(frozen=True)
class Load:
    """What one load run measured; latencies in ms, cpu_us = server CPU per request."""

    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    cpu_us: float
    gen_lag_p99_ms: float = 0.0
    gen_cpu: float = 0.0  # the generator's CPU use, in cores


@dataclass
class Server:
    name: str
    prefix: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_s(self) -> float:
        """User + system CPU the server process has used so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def content_length(head: bytes) -> int:
    """The Content-Length of a lower-cased HTTP/1.1 response head (aiohttp always sends one).

    >>> content_length(b"http/1.1 200 ok\\r\\ncontent-length: 18\\r\\nserver: x")
    18
    """
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name == b"content-length":
            return int(value)
    raise RuntimeError(f"answer without Content-Length: {head!r}")


# --- the load generator (runs in its own process) ---------------------------------------------


def generate(
    port: int, prefix: str, rate: float, duration_s: float, warmup_s: float, conns: int, seed: int
) -> dict[str, Any]:
    """Drive one server over keep-alive connections; rate > 0 is open loop, 0 is closed loop.

    A plain select() loop rather than asyncio: select() sleeps with microsecond precision,
    while asyncio's epoll waits are rounded up to whole milliseconds, which at 2,000 requests/s
    would make the generator itself late by up to 1 ms on most requests.
    """
    gc.disable()  # a collection pause here would be charged to the server as latency
    rng = random.Random(seed)
    host_line = f"Host: 127.0.0.1:{port}\r\n\r\n"
    socks = []
    for _ in range(conns):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
    by_fd = {sock.fileno(): i for i, sock in enumerate(socks)}
    idle = list(range(conns))
    bufs = [bytearray() for _ in range(conns)]
    inflight: dict[int, tuple[float, float]] = {}  # conn -> (scheduled, sent)
    backlog: deque[float] = deque()  # scheduled times waiting for a free connection
    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    socket_errors = 0
    measured = 0

    start = time.perf_counter() + 0.05
    measure_from = start + warmup_s
    end = measure_from + duration_s
    total = int(rate * (warmup_s + duration_s)) if rate > 0 else -1
    interval = 1.0 / rate if rate > 0 else 0.0
    next_i = 0
    cpu0 = time.process_time()

    def send(conn: int, scheduled: float) -> None:
        path = f"{prefix}{rng.randrange(TENANTS)}&user_id=u{rng.randrange(USERS)}"
        socks[conn].send(f"GET {path} HTTP/1.1\r\n{host_line}".encode())
        inflight[conn] = (scheduled, time.perf_counter())

    while True:
        now = time.perf_counter()
        if rate > 0:
            while next_i < total and start + next_i * interval <= now:
                backlog.append(start + next_i * interval)
                next_i += 1
            while backlog and idle:
                send(idle.pop(), backlog.popleft())
            if next_i >= total and not backlog and not inflight:
                break
            if now > end + 5.0:  # give up on answers more than 5 s late
                socket_errors += len(inflight) + len(backlog)
                break
            wait_s = max(0.0, start + next_i * interval - now) if next_i < total else 0.5
        else:
            if now >= end:
                if not inflight:
                    break
            else:
                while idle:
                    send(idle.pop(), time.perf_counter())
            if now > end + 5.0:
                socket_errors += len(inflight)
                break
            wait_s = 0.5
        readable, _, _ = select.select([socks[c] for c in inflight], [], [], wait_s)
        for sock in readable:
            conn = by_fd[sock.fileno()]
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                socket_errors += 1
                inflight.pop(conn, None)
                continue
            buf = bufs[conn]
            buf += data
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = bytes(buf[:head_end]).lower()
            length = content_length(head)
            if len(buf) < head_end + 4 + length:
                continue
            done_t = time.perf_counter()
            status = int(head[9:12])
            del buf[: head_end + 4 + length]
            scheduled, sent = inflight.pop(conn)
            idle.append(conn)
            statuses[status] = statuses.get(status, 0) + 1
            if scheduled >= measure_from and done_t <= end:
                measured += 1
            if measure_from <= scheduled < end:
                latencies.append(done_t - scheduled)
                lags.append(sent - scheduled)
    gen_cpu = (time.process_time() - cpu0) / (time.perf_counter() - start)
    for sock in socks:
        sock.close()
    latencies.sort()
    lags.sort()
    return {
        "rps": measured / duration_s,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "p999_ms": percentile(latencies, 99.9) * 1000,
        "requests": sum(statuses.values()),
        "non2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "socket_errors": socket_errors,
        "gen_lag_p99_ms": percentile(lags, 99) * 1000,
        "gen_cpu": gen_cpu,
    }


def run_generator(server: Server, rate: float, args: argparse.Namespace) -> Load:
    """Run generate() in a child process against one server and measure the server's CPU."""
    cmd = [
        sys.executable,
        __file__,
        "--generator-port",
        str(server.port),
        "--generator-prefix",
        server.prefix,
        "--generator-rate",
        str(rate),
        "--duration-s",
        str(args.duration_s),
        "--warmup-s",
        str(args.warmup_s),
        "--conns",
        str(args.conns),
        "--seed",
        str(args.seed),
    ]
    cpu0 = server.cpu_s()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout  # noqa: S603
    cpu_s = server.cpu_s() - cpu0
    result = json.loads(out.strip().splitlines()[-1])
    # the server's CPU covers warm-up and measurement: charge it to every answer in that time
    return Load(cpu_us=cpu_s / max(result["requests"], 1) * 1e6, **result)


def run_wrk(server: Server, lua: Path, args: argparse.Namespace) -> tuple[Load, int, int]:
    """A wrk warm-up then a measured run; also returns the warm-up's non-2xx and socket errors."""

    def wrk(duration_s: float) -> dict[str, float]:
        cmd = [
            "wrk",
            f"-t{args.wrk_threads}",
            f"-c{args.conns}",
            f"-d{duration_s:g}s",
            "-s",
            str(lua),
            server.url("/"),
            "--",
            server.prefix,
            str(TENANTS),
            str(USERS),
            str(args.seed),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout  # noqa: S603
        line = next(x for x in out.splitlines() if x.startswith("wrk_result "))
        return {k: float(v) for k, v in (f.split("=") for f in line.split()[1:])}

    def errors(r: dict[str, float]) -> int:
        return int(r["connect"] + r["read"] + r["write"] + r["timeout"])

    warm = wrk(args.warmup_s)
    cpu0 = server.cpu_s()
    r = wrk(args.duration_s)
    cpu_s = server.cpu_s() - cpu0
    load = Load(
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        p999_ms=r["p999_us"] / 1000,
        requests=int(r["requests"]),
        non2xx=int(r["non2xx"]),
        socket_errors=errors(r),
        cpu_us=cpu_s / max(r["requests"], 1) * 1e6,
    )
    return load, int(warm["non2xx"]), errors(warm)


# --- set-up: data, servers, correctness --------------------------------------------------------


def redis_client() -> Redis:
    client = Redis.from_url(REDIS_URL)
    if client.connection_pool.connection_kwargs.get("db") != REDIS_DB:
        raise SystemExit(f"refusing to use {REDIS_URL}: this bench flushes database {REDIS_DB}")
    return client


async def seed_decisions(rng: random.Random) -> list[tuple[int, int]]:
    """Flush db 11 and block BLOCKED random users for an hour; return them as (tenant, user)."""
    client = redis_client()
    try:
        await client.flushdb()
        now_ms = time.time_ns() // 1_000_000
        until_ms = now_ms + BLOCK_S * 1000
        blocked = [divmod(i, USERS) for i in rng.sample(range(TENANTS * USERS), BLOCKED)]
        decisions = [
            Decision(
                tenant_id=f"t{t}",
                scope=Scope.user,
                entity_id=f"u{u}",
                action=Action.block,
                until=rfc3339(until_ms),
                until_ms=until_ms,
                rule_id="bench_block",
                reason="bench_api: 1% of users blocked",
                decided_at=rfc3339(now_ms),
            )
            for t, u in blocked
        ]
        changes = await DecisionStore(client).save(decisions, now_ms)
        if len(changes) != BLOCKED:
            raise SystemExit(f"stored {len(changes)} decisions, expected {BLOCKED}")
        return blocked
    finally:
        await client.aclose()


async def flush() -> None:
    client = redis_client()
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def start_server(name: str, cmd: list[str], env: dict[str, str], prefix: str) -> Server:
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix=f"bench_api-{name}-", suffix=".log")[1])
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603
            [part.replace("{port}", str(port)) for part in cmd],
            cwd=REPO,
            env={**env, "DETECTOR_API_PORT": str(port)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Server(name, prefix, port, proc, log_path)


async def wait_ready(servers: list[Server]) -> None:
    """Until every server answers 200 on a real lookup; fail with its log if one exits."""
    async with aiohttp.ClientSession() as session:
        for server in servers:
            deadline = time.monotonic() + READY_TIMEOUT_S
            url = server.url(f"{server.prefix}0&user_id=u0")
            while True:
                if server.proc.poll() is not None:
                    log = server.log_path.read_text(errors="replace")[-2000:]
                    raise SystemExit(f"{server.name} exited with {server.proc.returncode}:\n{log}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{server.name} did not answer within {READY_TIMEOUT_S} s")
                await asyncio.sleep(0.1)


async def check_answers(servers: list[Server], blocked: list[tuple[int, int]]) -> list[str]:
    """A blocked user gets "block", an unblocked one "allow"; the problems found, if any."""
    blocked_set = set(blocked)
    allowed = next(
        (t, u) for t in range(TENANTS) for u in range(USERS) if (t, u) not in blocked_set
    )
    expected = [(blocked[0], "block"), (allowed, "allow")]
    problems = []
    async with aiohttp.ClientSession() as session:
        for server in servers:
            for (t, u), action in expected:
                url = server.url(f"{DECISION_PREFIX}{t}&user_id=u{u}")
                async with session.get(url) as resp:
                    body = await resp.json()
                if resp.status != 200 or body.get("action") != action:
                    problems.append(
                        f"{server.name}: t{t}/u{u} -> {resp.status} {body}, want {action}"
                    )
    return problems


def stop(servers: list[Server]) -> None:
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGINT)  # aiohttp's run_app shuts down cleanly on it
    for server in servers:
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
        server.log_path.unlink(missing_ok=True)


# --- the bench ---------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.3f}"


def bench(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    blocked = asyncio.run(seed_decisions(rng))
    # only what this bench sets: a DETECTOR_* variable in the caller's shell must not leak in
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env["DETECTOR_REDIS_URL"] = REDIS_URL
    env["DETECTOR_API_HOST"] = "127.0.0.1"
    api = [sys.executable, "-m", "detector", "api"]
    servers: list[Server] = []
    lua_path: Path | None = None
    try:
        minimal_cmd = [
            sys.executable,
            str(REPO / "benches" / "minimal_app.py"),
            "--port",
            "{port}",
            "--redis-url",
            REDIS_URL,
        ]
        servers.append(start_server("minimal_get", minimal_cmd, env, MINIMAL_PREFIX))
        servers.append(start_server("decision_cached", api, env, DECISION_PREFIX))
        servers.append(
            start_server(
                "decision_uncached",
                api,
                {**env, "DETECTOR_API_CACHE_MAX_AGE_S": "0"},
                DECISION_PREFIX,
            )
        )
        asyncio.run(wait_ready(servers))
        problems = asyncio.run(check_answers(servers[1:], blocked))
        if problems:
            print("correctness check failed:\n" + "\n".join(problems), file=sys.stderr)
            return 1
        print("check: blocked user -> block, unblocked user -> allow, on both API servers")
        minimal, cached, uncached = servers

        use_wrk = shutil.which("wrk") is not None and not args.no_wrk
        gen = "wrk" if use_wrk else "python"
        print(f"# cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.2f} closed_loop_gen={gen}")
        non2xx: dict[str, int] = {s.name: 0 for s in servers}
        socket_errors = 0
        closed: dict[str, Load] = {}
        if use_wrk:
            fd, name = tempfile.mkstemp(prefix="bench_api-", suffix=".lua")
            os.close(fd)
            lua_path = Path(name)
            lua_path.write_text(WRK_LUA)
        for server in servers:
            if lua_path is not None:
                load, warm_non2xx, warm_errors = run_wrk(server, lua_path, args)
            else:
                load, warm_non2xx, warm_errors = run_generator(server, 0, args), 0, 0
            closed[server.name] = load
            non2xx[server.name] += load.non2xx + warm_non2xx
            socket_errors += load.socket_errors + warm_errors
        base = closed[minimal.name]
        for server in (cached, uncached):
            cand = closed[server.name]
            print(
                f"case={server.name}_vs_minimal_get conns={args.conns} dur_s={args.duration_s:g}"
                f" base_rps={base.rps:.0f} cand_rps={cand.rps:.0f} ratio={cand.rps / base.rps:.2f}x"
                f" cand_p50_ms={ms(cand.p50_ms)} cand_p99_ms={ms(cand.p99_ms)}"
                f" cand_p999_ms={ms(cand.p999_ms)} base_p50_ms={ms(base.p50_ms)}"
                f" base_p99_ms={ms(base.p99_ms)} base_cpu_us={base.cpu_us:.0f}"
                f" cand_cpu_us={cand.cpu_us:.0f}"
            )

        rate = args.rate
        fixed = {s.name: run_generator(s, rate, args) for s in servers}
        for load_name, load in fixed.items():
            non2xx[load_name] += load.non2xx
            socket_errors += load.socket_errors
        base = fixed[minimal.name]
        inaccurate = []
        for server in (cached, uncached):
            cand = fixed[server.name]
            print(
                f"case={server.name}_at_{rate:g}rps rps_target={rate:g} rps_done={cand.rps:.0f}"
                f" p50_ms={ms(cand.p50_ms)} p99_ms={ms(cand.p99_ms)} p999_ms={ms(cand.p999_ms)}"
                f" goal_p99_ms={P99_GOAL_MS:g} met={'yes' if cand.p99_ms < P99_GOAL_MS else 'no'}"
                f" base_rps_done={base.rps:.0f} base_p50_ms={ms(base.p50_ms)}"
                f" base_p99_ms={ms(base.p99_ms)} base_p999_ms={ms(base.p999_ms)}"
                f" cand_cpu_us={cand.cpu_us:.0f} gen_lag_p99_ms={ms(cand.gen_lag_p99_ms)}"
                f" gen_cpu={cand.gen_cpu:.2f}"
            )
        for name, load in fixed.items():
            if load.rps < 0.98 * rate or load.gen_lag_p99_ms > 0.25 * load.p99_ms:
                inaccurate.append(name)
        lags = " ".join(f"{name}={ms(load.gen_lag_p99_ms)}" for name, load in fixed.items())
        shared = f"generator, servers and Redis share {os.cpu_count()} cores"
        if inaccurate:
            print(
                f"note: the {rate:g} requests/s figures are not accurate for"
                f" {', '.join(inaccurate)}: the generator fell behind (rps_done under 98% of the"
                f" target) or sent late (gen_lag_p99 over 25% of p99); {shared};"
                f" gen_lag_p99_ms: {lags}"
            )
        else:
            print(
                f"note: the generator kept {rate:g} requests/s with gen_lag_p99 under 25% of p99"
                f" on every server, but {shared}; gen_lag_p99_ms: {lags}"
            )
        if base.p99_ms >= P99_GOAL_MS:
            print(
                f"note: minimal_get (one Redis GET) itself has p99 {ms(base.p99_ms)} ms at"
                f" {rate:g} requests/s: this machine's tail is above the {P99_GOAL_MS:g} ms goal,"
                " so this run cannot tell whether the API meets it"
            )
        counts = " ".join(f"{name}={n}" for name, n in non2xx.items())
        any_bad = sum(non2xx.values()) + socket_errors > 0
        print(
            f"case=errors non2xx_or_socket_errors={'yes' if any_bad else 'no'} {counts}"
            f" socket_errors={socket_errors}"
        )
        return 0
    finally:
        stop(servers)
        if lua_path is not None:
            lua_path.unlink(missing_ok=True)
        asyncio.run(flush())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured time per run")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured load before it")
    parser.add_argument("--conns", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--rate", type=float, default=2000.0, help="open-loop requests/s")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--no-wrk", action="store_true", help="closed loop without wrk")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--generator-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generator-prefix", help=argparse.SUPPRESS)
    parser.add_argument("--generator-rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator_port is not None:  # the child process of run_generator
        result = generate(
            args.generator_port,
            args.generator_prefix,
            args.generator_rate,
            args.duration_s,
            args.warmup_s,
            args.conns,
            args.seed,
        )
        print(json.dumps(result))
        return
    sys.exit(bench(args))


if __name__ == "__main__":
    main()
