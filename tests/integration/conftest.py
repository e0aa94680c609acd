"""Fixtures over the real services started by `scripts/services up`: Kafka and Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from detector import keys
from detector.api.app import create_app
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.pipeline import Deps
from detector.pricing import PriceTable
from detector.rules.holder import RulesHolder
from detector.sinks.kafka import KafkaSink
from detector.slack_stub import SlackStub
from detector.startup import ensure_topics
from detector.windows.counters import WindowStore

from .redis_cluster import ClusterStartError, redis_cluster

# Tests use their own Redis database (flushed per test) so they never touch the demo's or a
# developer's data in db 0.
TEST_REDIS_URL = os.environ.get("DETECTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
TEST_KAFKA = os.environ.get("DETECTOR_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
FIX = "run scripts/services up (or set DETECTOR_TEST_KAFKA_BOOTSTRAP / DETECTOR_TEST_REDIS_URL)"


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    try:
        await client.ping()
    except (RedisError, OSError):
        pytest.fail(f"Redis not reachable at {TEST_REDIS_URL}; {FIX}")
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """A three-primary Redis Cluster, started once per session by the first test that asks."""
    try:
        with redis_cluster(tmp_path_factory.mktemp("cluster")) as ports:
            yield ports
    except ClusterStartError as exc:
        pytest.fail(str(exc))


@pytest.fixture
async def cluster(cluster_ports: list[int]) -> AsyncIterator[RedisCluster]:
    """A client of the test cluster, emptied (every primary) for each test."""
    client = RedisCluster.from_url(f"redis://127.0.0.1:{cluster_ports[0]}")
    await client.initialize()
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


async def wait_for(
    check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1
) -> Any:
    """Poll `check` (a function, or one returning a coroutine) until it gives something truthy;
    return that, or fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(every_s)


@pytest.fixture
def settings_factory(run_id: str, tmp_path: Path, redis: Redis) -> Callable[..., Settings]:
    """Settings isolated per test: uuid topic prefix and consumer group, the flushed test DB."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": TEST_KAFKA,
            "redis_url": TEST_REDIS_URL,
            "topic_prefix": f"test-{run_id}.",
            "consumer_group": f"test-{run_id}",
            "topic_partitions": 2,
            "data_dir": tmp_path / "data",
            "batch_max_wait_ms": 50,
            "rules": tmp_path / "rules.yaml",
        }
        values.update(overrides)
        if not (tmp_path / "rules.yaml").exists():
            (tmp_path / "rules.yaml").write_text("rules: []\n")  # a test may write its own
        return Settings(**values)

    return build


@pytest.fixture
def cluster_settings_factory(
    settings_factory: Callable[..., Settings], cluster_ports: list[int], cluster: RedisCluster
) -> Callable[..., Settings]:
    """Settings as settings_factory's, on the emptied test cluster: DETECTOR_REDIS_CLUSTER with
    a URL naming two nodes (not the one the `cluster` client starts from), as a user sets them."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": f"redis://127.0.0.1:{cluster_ports[1]},127.0.0.1:{cluster_ports[2]}/0",
            "redis_cluster": True,
        }
        values.update(overrides)
        return settings_factory(**values)

    return build


@pytest.fixture
async def kafka_topics(settings_factory: Callable[..., Settings]) -> Settings:
    settings = settings_factory()
    try:
        await asyncio.wait_for(ensure_topics(settings), timeout=20)
    except (KafkaError, OSError, TimeoutError) as exc:
        pytest.fail(f"Kafka not reachable at {TEST_KAFKA} ({exc!r}); {FIX}")
    return settings


@pytest.fixture
async def slack_stub() -> AsyncIterator[SlackStub]:
    stub = SlackStub()
    await stub.start()
    yield stub
    await stub.stop()


async def produce(settings: Settings, values: list[bytes], keys_: list[bytes | None]) -> None:
    """Publish to the events topic in order and wait until Kafka acknowledged every message."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        topic = settings.topic(keys.TOPIC_EVENTS)
        pairs = zip(values, keys_, strict=True)
        futures = [await producer.send(topic, value=value, key=key) for value, key in pairs]
        for future in futures:
            await future
    finally:
        await producer.stop()


def event_bytes(**fields: Any) -> bytes:
    return orjson.dumps(fields)


async def read_topic(
    settings: Settings, name: str, count: int, timeout_s: float = 30.0
) -> list[Any]:
    """Read `count` messages from the start of a topic, or fail after timeout_s."""
    consumer = AIOKafkaConsumer(
        settings.topic(name),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(got) < count and asyncio.get_running_loop().time() < deadline:
            polled = await consumer.getmany(timeout_ms=500)
            for batch in polled.values():
                got.extend(batch)
    finally:
        await consumer.stop()
    return got


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a `detector` subprocess use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"DETECTOR_{name.upper()}"] = str(value)
    env.update(extra)
    return env


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture
async def subprocesses() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes a test starts; whatever is still running at the end is killed and reaped."""
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@asynccontextmanager
async def serve_api(settings: Settings, redis: Redis | None) -> AsyncIterator[str]:
    """The lookup API on a free loopback port, for the length of a `with` block."""
    runner = web.AppRunner(create_app(settings, redis))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


WorkerStarter = Callable[..., Awaitable[tuple[asyncio.subprocess.Process, Path]]]


@pytest.fixture
def worker_factory(
    python: str, subprocesses: list[asyncio.subprocess.Process], tmp_path: Path
) -> WorkerStarter:
    """Start `detector worker` processes on given settings; each logs to tmp_path/NAME.log."""

    async def start(
        settings: Settings, name: str = "worker", **env: str
    ) -> tuple[asyncio.subprocess.Process, Path]:
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                python, "-m", "detector", "worker",
                env=settings_env(settings, **env), stdout=log, stderr=log,
            )  # fmt: skip
        subprocesses.append(proc)
        return proc, log_path

    return start


@pytest.fixture
async def pipeline_deps_factory(
    redis: Redis, kafka_topics: Settings, tmp_path: Path
) -> AsyncIterator[Callable[[str], Deps]]:
    """Deps for calling `pipeline.handle_batch` directly: real Redis, and the real Kafka topics
    of this test for everything the pipeline publishes."""
    kafka = KafkaSink(kafka_topics)
    await kafka.start()

    def build(rules_text: str) -> Deps:
        path = tmp_path / "rules.yaml"
        path.write_text(rules_text)
        settings = kafka_topics.model_copy(update={"rules": path})
        return Deps(
            settings=settings,
            rules=RulesHolder(path),
            prices=PriceTable.load(),
            windows=WindowStore(redis, 3600, settings.allowed_lateness_s),
            decisions=DecisionStore(redis),
            kafka=kafka,
        )

    yield build
    await kafka.close()
