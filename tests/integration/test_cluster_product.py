"""The whole product on a real Redis Cluster (conftest's three primaries), reached the way a
user sets it up: DETECTOR_REDIS_CLUSTER=true and the URL of one node. A `detector worker`
subprocess counts a stream once and decides; the lookup API answers decisions, reservations and
spend, and its cache hears changes announced on any node; a Slack alert is lifted by the
command it gives and resolved in its thread; the anomaly and Slack stores round-trip; `detector
spend` and `detector report` read the cluster; bad settings stop start-up."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from detector import keys
from detector.anomaly.state import EntityState, ModelStore
from detector.config import Settings, load_settings
from detector.decisions.policy import STRICTNESS, lift_record, manual_decision
from detector.decisions.store import Change, DecisionStore
from detector.errors import ConfigError
from detector.pipeline import Deps, handle_batch
from detector.pricing import PriceTable
from detector.redis_client import connect_redis
from detector.rules.holder import RulesHolder
from detector.schemas import Action, Alert, AlertKind, Decision, Scope, Severity
from detector.sinks.kafka import KafkaSink
from detector.sinks.slack_state import MessageRecord, SlackState
from detector.slack_stub import SlackStub
from detector.startup import check_redis
from detector.timefmt import rfc3339
from detector.windows.counters import WindowStore

from .conftest import (
    TEST_REDIS_URL,
    WorkerStarter,
    free_port,
    produce,
    read_topic,
    serve_api,
    settings_env,
    wait_for,
)
from .test_reservations import RULES as RESERVATION_RULES
from .test_slack_e2e import RULES as SLACK_RULES
from .test_slack_e2e import alert_lift_resolve
from .test_walking_skeleton import RULES as SKELETON_RULES

# The walking skeleton's burn rule, with the anomaly models on tenants and users.
BURN_RULES = (
    SKELETON_RULES
    + """anomaly:
  scopes: [tenant, user]
  interval: 1m
  persist_every: 1
  outliers: null
"""
)


def now() -> int:
    return time.time_ns() // 1_000_000


async def nodes_holding_keys(cluster: RedisCluster) -> int:
    holding = 0
    for node in cluster.get_primaries():
        plain = Redis(host=node.host, port=int(node.port))
        holding += 1 if await plain.dbsize() > 0 else 0
        await plain.aclose()
    return holding


@pytest.mark.timeout(240)
async def test_worker_on_a_cluster_counts_each_event_once_and_decides(
    cluster_settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    cluster: RedisCluster,
    worker_factory: WorkerStarter,
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.yaml").write_text(BURN_RULES)
    settings = cluster_settings_factory(batch_max_events=300)
    at_ms = now()
    rng = random.Random(11)
    events = []
    expected: dict[str, int] = defaultdict(int)
    for i in range(3000):
        tenant = f"t{rng.randrange(30)}"
        micros = rng.randrange(1, 10_000)  # about $0.50 a tenant: none reaches $1 an hour
        events.append({"event_id": f"e{i}", "ts": at_ms - rng.randrange(0, 300_000),
                       "tenant_id": tenant, "user_id": f"u{rng.randrange(20)}",
                       "model": "gpt-4o", "cost_usd": micros / 1e6})  # fmt: skip
        expected[tenant] += micros
    for i in range(30):  # one tenant burns $1.50 within minutes
        events.append({"event_id": f"w{i}", "ts": at_ms - 60_000, "tenant_id": "whale",
                       "model": "gpt-4o", "cost_usd": 0.05})  # fmt: skip
        expected["whale"] += 50_000
    stream = events + rng.sample(events, 400)  # published twice
    rng.shuffle(stream)
    await produce(settings, [orjson.dumps(e) for e in stream],
                  [str(e["tenant_id"]).encode() for e in stream])  # fmt: skip

    proc, log_path = await worker_factory(settings)
    store = WindowStore(cluster, settings.dedup_horizon_s)

    async def requests() -> int:
        assert proc.returncode is None, f"the worker exited: {log_path.read_text()[-3000:]}"
        [total] = await store.read_windows([("_global", Scope.global_, "all", "1h")], now())
        return int(total["requests"])

    await wait_for(lambda: _at_least(requests, len(events)), 90, "every event counted")
    await asyncio.sleep(2.0)  # anything counted twice would show up now
    assert await requests() == len(events)

    tenants = sorted(expected)
    sums = await store.read_windows([(t, Scope.tenant, t, "1h") for t in tenants], now())
    got = {t: round(s["cost_usd"] * 1_000_000) for t, s in zip(tenants, sums, strict=True)}
    assert got == dict(expected)
    [total] = await store.read_windows([("_global", Scope.global_, "all", "1h")], now())
    assert round(total["cost_usd"] * 1_000_000) == sum(expected.values())
    assert await nodes_holding_keys(cluster) >= 2

    # The anomaly models' states, saved by the worker in the tenants' slots on several nodes:
    # every tenant's, though the backlog's two partitions are read unevenly (event time is
    # followed per partition, so one read ahead does not close the other's minutes).
    async def every_tenant_modelled() -> dict[str, int]:
        found = await _modelled(cluster, tenants)
        return found if len(found) == len(tenants) else {}

    modelled = await wait_for(every_tenant_modelled, 30, "anomaly states of every tenant")
    nodes = [cluster.get_node_from_key(keys.anomaly_index_key(t)) for t in modelled]
    homes = {node.name for node in nodes if node is not None}
    assert len(homes) >= 2, modelled

    decisions = await DecisionStore(cluster).lookup([("whale", Scope.tenant, "whale")], now())
    assert [(d.action, d.rule_id) for d in decisions] == [(Action.block, "tenant-hourly-burn")]
    published = await read_topic(settings, keys.TOPIC_DECISIONS, 1)
    assert [orjson.loads(m.value)["tenant_id"] for m in published] == ["whale"]

    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), timeout=30)
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log and "held, retrying" not in log, log[-3000:]


@pytest.mark.timeout(180)
async def test_slack_alert_lift_and_resolved_reply_on_a_cluster(
    cluster_settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    slack_stub: SlackStub,
    worker_factory: WorkerStarter,
    tmp_path: Path,
    python: str,
) -> None:
    """test_slack_e2e's story on the cluster: the worker's notifier keeps its state there, the
    `detector override lift` command ends the block there, and the reply follows."""
    (tmp_path / "rules.yaml").write_text(SLACK_RULES)
    await alert_lift_resolve(cluster_settings_factory(), slack_stub, worker_factory, python)


async def _modelled(cluster: RedisCluster, tenants: list[str]) -> dict[str, int]:
    sizes = await ModelStore(cluster).sizes(tenants)
    return {t: n for t, n in sizes.items() if n > 0}


async def _at_least(count: Callable[[], object], target: int) -> bool:
    value = count()
    assert asyncio.iscoroutine(value)
    return int(await value) >= target


async def _answer(http: aiohttp.ClientSession, base: str, user: str) -> str:
    async with http.get(f"{base}/v1/decision", params={"tenant_id": "acme", "user_id": user}) as r:
        assert r.status == 200, await r.text()
        body: dict[str, str] = await r.json()
        return body["action"]


def _block(user: str, for_ms: int) -> Decision:
    at = now()
    return Decision(
        tenant_id="acme", scope=Scope.user, entity_id=user, action=Action.block,
        until=rfc3339(at + for_ms), until_ms=at + for_ms, rule_id="r", reason="test",
        decided_at=rfc3339(at),
    )  # fmt: skip


async def test_api_on_a_cluster(
    cluster_settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    cluster: RedisCluster,
    tmp_path: Path,
) -> None:
    """Spend, a reservation and decisions through the API's own cluster client; with a maximum
    cache age of 5 minutes, only the pub/sub announcements can explain a changed answer."""
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(RESERVATION_RULES)
    settings = cluster_settings_factory(api_cache_max_age_s=300.0)
    kafka = KafkaSink(settings)
    await kafka.start()
    try:
        deps = Deps(settings=settings, rules=RulesHolder(rules_path), prices=PriceTable.load(),
                    windows=WindowStore(cluster, 3600), decisions=DecisionStore(cluster),
                    kafka=kafka)  # fmt: skip
        body = orjson.dumps({"event_id": "spent", "ts": now(), "tenant_id": "acme",
                             "user_id": "u0", "model": "gpt-4o", "cost_usd": 9.5})  # fmt: skip
        await handle_batch([(b"acme", body)], deps, now())
    finally:
        await kafka.close()
    store = DecisionStore(cluster)
    async with serve_api(settings, None) as base, aiohttp.ClientSession() as http:
        params = {"scope": "tenant", "tenant_id": "acme", "window": "today"}
        async with http.get(f"{base}/v1/spend", params=params) as r:
            spend = await r.json()
        assert r.status == 200 and spend["metrics"]["cost_usd"] == 9.5, spend

        async def reserve(request_id: str, usd: float) -> bool:
            ask = {"request_id": request_id, "tenant_id": "acme", "estimated_cost_usd": usd}
            async with http.post(f"{base}/v1/reserve", json=ask) as r:
                assert r.status == 200, await r.text()
                return bool((await r.json())["granted"])

        assert await reserve("r1", 0.4) is True  # $0.10 left after it
        assert await reserve("r2", 0.2) is False
        assert await cluster.hlen(keys.hold_key("acme", "tenant-daily", Scope.tenant, "acme")) == 1

        await asyncio.sleep(0.5)  # the cache's subscription is up
        for _ in range(3):
            assert await _answer(http, base, "u1") == "allow"  # cached: no decision
        # Written without an announcement: the cache keeps answering from memory...
        quiet = _block("u1", 600_000)
        await cluster.hset(
            keys.decision_key("acme", Scope.user, "u1"),
            mapping={"rank": int(STRICTNESS[Action.block]), "until_ms": quiet.until_ms,
                     "json": quiet.model_dump_json()},
        )  # fmt: skip
        assert await _answer(http, base, "u1") == "allow"
        # ...until a change is announced: an extension, published from the tenant's node.
        await store.save([_block("u1", 900_000)], now())
        await wait_for(lambda: _is(http, base, "u1", "block"), 3, "the extension announced")
        allow = manual_decision("acme", Scope.user, "u1", Action.allow, 600, "vip", "t", now())
        await store.override(allow, now())
        await wait_for(lambda: _is(http, base, "u1", "allow"), 3, "the override announced")
        lifted = await store.lift(lift_record("acme", Scope.user, "u1", "done", "t", now()))
        assert sorted(d.action for d in lifted) == [Action.allow, Action.block]
        assert await _answer(http, base, "u1") == "allow"
        assert [d.lifted for d in await store.audit("acme", 2)] == [True, False]


async def _is(http: aiohttp.ClientSession, base: str, user: str, action: str) -> bool:
    return await _answer(http, base, user) == action


async def test_anomaly_and_slack_state_round_trip_on_a_cluster(cluster: RedisCluster) -> None:
    models = ModelStore(cluster)
    tenants = [f"tenant-{i}" for i in range(12)]
    states = {
        (t, Scope.user, f"u{j}"): EntityState(signature="sig", detector=None,
                                              last_start_ms=1000 * j, intervals=j)
        for t in tenants for j in range(3)
    }  # fmt: skip
    assert await models.save(states, idle_expiry_s=3600) > 0
    loaded = await models.load(states)
    assert {k: (s.last_start_ms, s.intervals) for k, s in loaded.items()} == {
        k: (s.last_start_ms, s.intervals) for k, s in states.items()
    }
    assert await models.marks(states) == {k: s.last_start_ms for k, s in states.items()}
    assert await models.sizes(tenants) == dict.fromkeys(tenants, 3)
    assert await models.prune("tenant-3", older_than_ms=1500) == 2
    assert await models.sizes(["tenant-3"]) == {"tenant-3": 1}
    assert await nodes_holding_keys(cluster) >= 2

    slack = SlackState(cluster)
    at = now()
    alerts = [
        Alert(
            alert_id=f"a{i}",
            kind=AlertKind.rule,
            rule_id="burn",
            severity=Severity.critical,
            tenant_id=f"tenant-{i}",
            scope=Scope.user,
            entity_id=f"u{i}",
            window="1h",
            metric="cost_usd",
            observed=2.0,
            threshold=1.0,
            action=Action.block,
            until=rfc3339(at + 600_000),
            event_time=rfc3339(at),
            created_at=rfc3339(at),
            message="over",
        )  # fmt: skip
        for i in range(6)
    ]
    for alert in alerts:
        record = MessageRecord("posted", "#spend", "1.1", at, None)
        await slack.set_message(alert.tenant_id, alert.alert_id, record)
        await slack.set_carriers(alert.tenant_id, [alert.alert_id], alert.alert_id)
        await slack.open_thread(alert, "#spend", "1.1", at + 600_000, 60_000, at)
    for alert in alerts:
        assert await slack.message(alert.tenant_id, alert.alert_id) == MessageRecord(
            "posted", "#spend", "1.1", at, None
        )
        assert await slack.carrier(alert.tenant_id, alert.alert_id) == alert.alert_id
        thread = await slack.thread(alert)
        assert thread is not None and thread.alert == alert and thread.until_ms == at + 600_000
    assert len(await slack.open_threads()) == len(alerts)
    assert await slack.recent("tenant-0", "burn", 2, 60) == 0
    assert await slack.recent("tenant-0", "burn", 1, 60) == 2
    same_tenant = [a.model_copy(update={"tenant_id": "tenant-0"}) for a in alerts[:3]]
    members = await slack.join_burst("tenant-0", "burn", same_tenant, 60, ("#spend", "2.2", "m"))
    assert sorted(m.entity_id for m in members) == ["u0", "u1", "u2"]
    assert await slack.burst("tenant-0", "burn") == ("#spend", "2.2", "m")
    assert await slack.claim("tenant-1", "m1") is True
    assert await slack.claim("tenant-1", "m1") is False
    thread = await slack.thread(alerts[0])
    assert thread is not None
    await slack.close_thread(thread.key)
    assert await slack.thread(alerts[0]) is None
    assert len(await slack.open_threads()) == len(alerts) - 1


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  (our own command, fixed arguments)
        [sys.executable, "-m", "detector", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


async def test_spend_and_report_commands_on_a_cluster(
    cluster_settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    cluster: RedisCluster,
) -> None:
    settings = cluster_settings_factory()
    kafka = KafkaSink(settings)
    await kafka.start()
    deps = Deps(settings=settings, rules=RulesHolder(settings.rules), prices=PriceTable.load(),
                windows=WindowStore(cluster, 3600), decisions=DecisionStore(cluster),
                kafka=kafka)  # fmt: skip
    spent = {"acme": {"u1": 3_000_000, "u2": 1_250_000}, "globex": {"g1": 500_000}}
    batch = [
        (tenant.encode(), orjson.dumps({"event_id": f"{tenant}-{user}", "ts": now(),
                                        "tenant_id": tenant, "user_id": user,
                                        "model": "gpt-4o", "cost_usd": micros / 1e6}))
        for tenant, users in spent.items() for user, micros in users.items()
    ]  # fmt: skip
    try:
        await handle_batch(batch, deps, now())
    finally:
        await kafka.close()
    env = settings_env(settings)

    done = _run(["spend", "--tenant", "acme", "--window", "today", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["metrics"]["cost_usd"] == 4.25
    done = _run(["spend", "--scope", "global", "--window", "1h", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["metrics"]["requests"] == 3

    done = _run(["report", "top-spenders", "--tenant", "acme", "--period", "day",
                 "--format", "json"], env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "u1" in done.stdout and "u2" in done.stdout and "g1" not in done.stdout
    done = _run(["report", "cost-by-model", "--period", "day", "--format", "json"], env)
    assert done.returncode == 0, done.stderr
    assert "gpt-4o" in done.stdout and "4.75" in done.stdout
    assert [k async for k in cluster.scan_iter(match="det:tmp:*")] == []  # unions dropped


async def test_start_up_refuses_a_cluster_without_the_setting_and_the_reverse(
    cluster_ports: list[int],
) -> None:
    node = f"redis://127.0.0.1:{cluster_ports[0]}/0"
    with pytest.raises(ConfigError) as exc:
        await check_redis(load_settings(redis_url=node))
    assert str(exc.value) == (
        f"Redis at DETECTOR_REDIS_URL={node!r} is a Redis Cluster node: "
        "set DETECTOR_REDIS_CLUSTER=true"
    )
    await check_redis(load_settings(redis_url=node, redis_cluster=True))
    with pytest.raises(ConfigError) as exc:
        await check_redis(load_settings(redis_url=TEST_REDIS_URL.rsplit("/", 1)[0] + "/0",
                                        redis_cluster=True))  # fmt: skip
    assert "DETECTOR_REDIS_CLUSTER=true but Redis at DETECTOR_REDIS_URL=" in str(exc.value)
    assert "is not a Redis Cluster" in str(exc.value)


async def test_a_node_down_at_start_is_passed_over(cluster_ports: list[int]) -> None:
    dead = free_port()
    url = f"redis://127.0.0.1:{dead},127.0.0.1:{cluster_ports[2]}/0"
    settings = load_settings(redis_url=url, redis_cluster=True)
    await check_redis(settings)
    client = connect_redis(settings)
    try:
        store = DecisionStore(client)
        await store.save([_block("u9", 600_000)], now())
        [found] = await store.lookup([("acme", Scope.user, "u9")], now())
        assert found.action is Action.block
    finally:
        await client.aclose()
    with pytest.raises(ConfigError) as exc:
        await check_redis(load_settings(redis_url=f"redis://127.0.0.1:{dead}/0",
                                        redis_cluster=True))  # fmt: skip
    assert str(exc.value).startswith(
        f"Redis unreachable at DETECTOR_REDIS_URL='redis://127.0.0.1:{dead}/0': "
    )


async def test_decision_scripts_flushed_on_the_nodes_are_loaded_again(
    cluster: RedisCluster,
) -> None:
    """As after a node restart or failover: the upsert runs in a pipeline, which fails once
    (the worker retries the batch) and then loads it again; scripts called alone reload."""
    store = DecisionStore(cluster)
    assert await store.save([_block("u1", 600_000)], now()) == [Change.new]
    await cluster.script_flush()
    with pytest.raises(NoScriptError):
        await store.save([_block("u2", 600_000)], now())
    assert await store.save([_block("u2", 600_000)], now()) == [Change.new]
    await cluster.script_flush()
    allow = manual_decision("acme", Scope.user, "u1", Action.allow, 600, "vip", "t", now())
    await store.override(allow, now())
    found = await store.lookup([("acme", Scope.user, "u1"), ("acme", Scope.user, "u2")], now())
    assert [(d.entity_id, d.action) for d in found] == [("u2", Action.block), ("u1", Action.allow)]
    assert await store.claim_alert("acme", "r", Scope.user, "u1", 60, now()) is True
    assert await store.claim_alert("acme", "r", Scope.user, "u1", 60, now()) is False
