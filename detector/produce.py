"""Publish JSONL cost events to the events topic, keyed by tenant."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer

from detector import keys
from detector.config import Settings


def tenant_key(line: bytes) -> bytes | None:
    """The tenant id of a JSON event as the message key, None when the line is not one.

    >>> tenant_key(b'{"tenant_id": "acme"}'), tenant_key(b"not json")
    (b'acme', None)
    """
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and isinstance(data.get("tenant_id"), str):
        return str(data["tenant_id"]).encode()
    return None


async def produce_lines(settings: Settings, lines: Sequence[bytes]) -> int:
    """Send every line as one message and wait until Kafka acknowledged all of them."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=10,
        enable_idempotence=True,
    )
    await producer.start()
    try:
        topic = settings.topic(keys.TOPIC_EVENTS)
        futures = [await producer.send(topic, value=line, key=tenant_key(line)) for line in lines]
        for future in futures:
            await future
    finally:
        await producer.stop()
    return len(lines)
