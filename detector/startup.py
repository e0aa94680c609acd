"""Start-up checks: reach Redis and Kafka or stop with one clear line."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from detector import keys
from detector.config import Settings
from detector.errors import ConfigError
from detector.redis_client import REDIS_ERRORS, connect_redis


async def check_redis(settings: Settings) -> None:
    client = connect_redis(settings, connect_timeout_s=3)
    try:
        await client.ping()
        info = await client.info("cluster")
    except REDIS_ERRORS as exc:
        # redis-py's words when the node it asked for the slots is not in cluster mode
        if settings.redis_cluster and "cluster mode is not enabled" in str(exc).lower():
            raise ConfigError(
                f"DETECTOR_REDIS_CLUSTER=true but Redis at DETECTOR_REDIS_URL="
                f"{settings.redis_url!r} is not a Redis Cluster ({exc}); unset "
                "DETECTOR_REDIS_CLUSTER for a single server"
            ) from exc
        raise ConfigError(
            f"Redis unreachable at DETECTOR_REDIS_URL={settings.redis_url!r}: {exc} "
            "(run scripts/services up, or point DETECTOR_REDIS_URL at your Redis)"
        ) from exc
    finally:
        await client.aclose()
    if not settings.redis_cluster and _cluster_enabled(info):
        # The one-server client would fail on every key served by another node (MOVED).
        raise ConfigError(
            f"Redis at DETECTOR_REDIS_URL={settings.redis_url!r} is a Redis Cluster node: "
            "set DETECTOR_REDIS_CLUSTER=true"
        )


def _cluster_enabled(info: object) -> bool:
    """Whether INFO cluster says cluster mode is on (a cluster client answers per node)."""
    if isinstance(info, dict):
        if "cluster_enabled" in info:
            return str(info["cluster_enabled"]) == "1"
        return any(_cluster_enabled(part) for part in info.values())
    return False


async def check_kafka(settings: Settings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=5000)
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        raise ConfigError(
            f"Kafka unreachable at DETECTOR_KAFKA_BOOTSTRAP={settings.kafka_bootstrap!r}: "
            f"{exc!r} (run scripts/services up, or point DETECTOR_KAFKA_BOOTSTRAP at your broker)"
        ) from exc
    finally:
        await producer.stop()


async def ensure_topics(settings: Settings) -> None:
    """Create the four topics when missing (partitions per settings, one replica per node)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = (keys.TOPIC_EVENTS, keys.TOPIC_DECISIONS, keys.TOPIC_ALERTS, keys.TOPIC_DEADLETTER)
        missing = [settings.topic(n) for n in names if settings.topic(n) not in existing]
        if missing:
            new = [NewTopic(n, settings.topic_partitions, 1) for n in missing]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another worker created them first
    finally:
        await admin.close()
