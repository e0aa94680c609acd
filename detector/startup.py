"""Start-up checks: reach Redis and Kafka or stop with one clear line."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from detector import keys
from detector.config import Settings
from detector.errors import ConfigError


async def check_redis(settings: Settings) -> None:
    client = Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise ConfigError(
            f"Redis unreachable at DETECTOR_REDIS_URL={settings.redis_url!r}: {exc} "
            "(run scripts/services up, or point DETECTOR_REDIS_URL at your Redis)"
        ) from exc
    finally:
        await client.aclose()


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
