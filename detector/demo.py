"""`detector demo`: the product end to end on the local stack, in about a minute.

Starts a worker and an API process, a local Slack stand-in, plays seeded traffic in real time in
which tenant-0 turns into a runaway agent loop, then prints what Slack received and what the
lookup API answers for that tenant and for a well-behaved one, and stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from detector import keys
from detector.config import Settings
from detector.errors import ConfigError
from detector.redis_client import connect_redis
from detector.reports.render import render
from detector.reports.service import report_for
from detector.simulate import Scenario, generate
from detector.slack_stub import SlackStub
from detector.startup import ensure_topics

DEMO_REDIS_DB = 15


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo_redis_url(url: str) -> str:
    base, _, last = url.rpartition("/")
    if last.isdigit() and base.count("/") >= 2:
        return f"{base}/{DEMO_REDIS_DB}"
    return f"{url.rstrip('/')}/{DEMO_REDIS_DB}"


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


async def run_demo(settings: Settings, seconds: float) -> int:
    if settings.redis_cluster:
        raise ConfigError(
            f"the demo uses a database of its own ({DEMO_REDIS_DB}) that it empties first, "
            "and a Redis Cluster has only database 0: run it with DETECTOR_REDIS_CLUSTER unset "
            "and DETECTOR_REDIS_URL pointing at a single Redis server"
        )
    run_id = uuid.uuid4().hex[:6]
    prefix = f"demo-{run_id}."
    redis_url = _demo_redis_url(settings.redis_url)
    redis = connect_redis(settings.model_copy(update={"redis_url": redis_url}))
    await redis.flushdb()
    log_dir = Path(".run")
    log_dir.mkdir(exist_ok=True)
    stub = SlackStub()
    use_stub = settings.slack_webhook_url is None and settings.slack_bot_token is None
    if use_stub:
        await stub.start()
    api_port = _free_port()
    env = {
        **os.environ,
        "DETECTOR_TOPIC_PREFIX": prefix,
        "DETECTOR_REDIS_URL": redis_url,
        "DETECTOR_CONSUMER_GROUP": f"demo-{run_id}",
        "DETECTOR_API_PORT": str(api_port),
        "DETECTOR_API_HOST": "127.0.0.1",
        "DETECTOR_DATA_DIR": str(log_dir / "demo-data"),
        "DETECTOR_BATCH_MAX_WAIT_MS": "100",
    }
    env.pop("DETECTOR_API_TOKENS", None)
    if use_stub:
        env["DETECTOR_SLACK_WEBHOOK_URL"] = stub.webhook_url
    say(f"run {run_id}: topics {prefix}*, Redis db {DEMO_REDIS_DB} (flushed)")
    procs = []
    try:
        for name in ("worker", "api"):
            logfile = (log_dir / f"demo-{name}.log").open("wb")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "detector", name, env=env, stdout=logfile, stderr=logfile
            )
            procs.append((name, proc))
        say(f"worker and API started (logs in {log_dir}/demo-worker.log and demo-api.log)")
        api = f"http://127.0.0.1:{api_port}"
        await ensure_topics(settings.model_copy(update={"topic_prefix": prefix}))
        await _wait_ready(api, procs)
        blocked_at = await _play(settings, prefix, api, seconds)
        await asyncio.sleep(2.0)  # let the notifier deliver
        status = await _report(api, stub if use_stub else None, blocked_at)
        await _attribution(settings.model_copy(update={"redis_url": redis_url}))
        return status
    finally:
        for _, proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for name, proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            say(f"stopped {name}")
        if use_stub:
            await stub.stop()
        await redis.aclose()


async def _wait_ready(api: str, procs: list[tuple[str, asyncio.subprocess.Process]]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            for name, proc in procs:
                if proc.returncode is not None:
                    raise SystemExit(f"demo: the {name} exited early, see .run/demo-{name}.log")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{api}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise SystemExit("demo: the API did not become ready, see .run/demo-api.log")


async def _play(settings: Settings, prefix: str, api: str, seconds: float) -> float | None:
    """Publish the scenario in real time; return when (seconds in) tenant-0 got blocked."""
    abuse_at = min(20.0, seconds / 3)
    scenario = Scenario(duration_s=seconds, abuse_at_s=abuse_at)
    say(
        f"playing {seconds:.0f}s of traffic: {scenario.tenants} tenants, "
        f"{scenario.rate_per_s:.0f} events/s; tenant-0 becomes a runaway agent at {abuse_at:.0f}s"
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    topic = prefix + keys.TOPIC_EVENTS
    start_ms = time.time_ns() // 1_000_000
    started = time.monotonic()
    sent, next_report, blocked_at = 0, 5.0, None
    try:
        async with aiohttp.ClientSession() as session:
            for event in generate(scenario, start_ms):
                due = (event["ts"] - start_ms) / 1000
                delay = due - (time.monotonic() - started)
                if delay > 0:
                    await asyncio.sleep(delay)
                await producer.send(topic, orjson.dumps(event), key=event["tenant_id"].encode())
                sent += 1
                elapsed = time.monotonic() - started
                if elapsed >= next_report:
                    next_report += 5.0
                    answer = await _lookup(session, api, "tenant-0")
                    state = answer["action"]
                    if state == "block" and blocked_at is None:
                        blocked_at = elapsed
                    say(f"t={elapsed:4.0f}s sent {sent:5d} events; tenant-0 is {state}")
    finally:
        await producer.stop()
    return blocked_at


async def _lookup(session: aiohttp.ClientSession, api: str, tenant: str) -> dict[str, Any]:
    async with session.get(f"{api}/v1/decision", params={"tenant_id": tenant}) as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def _attribution(settings: Settings) -> None:
    """The cost-attribution answers for the same traffic, as `detector report` prints them."""
    now = time.time_ns() // 1_000_000
    for name, top in (("top-spenders", "3"), ("cost-by-model", "")):
        report = await report_for(settings, name, "", "day", "", top, now)
        say(f"detector report {name} --period day{' --top ' + top if top else ''} ->")
        print(render(report, "table"), flush=True)


async def _report(api: str, stub: SlackStub | None, blocked_at: float | None) -> int:
    if stub is not None:
        say(f"Slack received {len(stub.messages)} message(s):")
        for message in stub.messages:
            # Slack shows its mrkdwn escapes (&gt;) as the characters they stand for.
            say(f"  {html.unescape(str(message.get('text', '')))}")
    async with aiohttp.ClientSession() as session:
        bad = await _lookup(session, api, "tenant-0")
        good = await _lookup(session, api, "tenant-1")
        async with session.get(
            f"{api}/v1/spend", params={"tenant_id": "tenant-0", "window": "5m"}
        ) as r:
            spend = await r.json()
    say("GET /v1/decision?tenant_id=tenant-0 ->")
    print(orjson.dumps(bad, option=orjson.OPT_INDENT_2).decode(), flush=True)
    say(f"GET /v1/decision?tenant_id=tenant-1 -> {orjson.dumps(good).decode()}")
    say(f"tenant-0 spent ${spend['metrics']['cost_usd']:.2f} in the last 5 minutes")
    if bad["action"] != "block":
        say("FAILED: tenant-0 was not blocked")
        return 1
    when = f" ({blocked_at:.0f}s into the run)" if blocked_at is not None else ""
    say(f"tenant-0 is blocked{when}; tenant-1 is {good['action']}")
    return 0
