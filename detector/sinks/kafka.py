"""Kafka output: dead letters, decision changes and alerts, keyed by tenant."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer

from detector import keys
from detector.config import Settings
from detector.errors import BadEvent
from detector.schemas import Alert, Decision


def dead_letter_value(raw: bytes, error: BadEvent) -> bytes:
    """JSON body of a dead letter: the original bytes (as text when they decode), reason, detail.

    >>> dead_letter_value(b"nope", BadEvent("invalid_json", "unexpected character"))
    b'{"reason":"invalid_json","detail":"unexpected character","original":"nope"}'
    """
    try:
        original: str = raw.decode("utf-8")
        body = {"reason": error.reason, "detail": error.detail, "original": original}
    except UnicodeDecodeError:
        body = {"reason": error.reason, "detail": error.detail, "original_hex": raw.hex()}
    return orjson.dumps(body)


class KafkaSink:
    """One producer for every topic the worker writes."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            linger_ms=5,
            enable_idempotence=True,
            client_id="detector-worker",
        )

    async def start(self) -> None:
        await self._producer.start()

    async def close(self) -> None:
        await self._producer.stop()

    async def send_dead_letters(
        self, items: Sequence[tuple[bytes | None, bytes, BadEvent]]
    ) -> None:
        """Publish rejected events (key, original bytes, reason) and wait until Kafka has them."""
        topic = self._settings.topic(keys.TOPIC_DEADLETTER)
        futures = []
        for key, raw, error in items:
            futures.append(
                await self._producer.send(
                    topic,
                    value=dead_letter_value(raw, error),
                    key=key,
                    headers=[("reason", error.reason.encode())],
                )
            )
        for future in futures:
            await future

    async def send_decisions(self, decisions: Sequence[Decision]) -> None:
        topic = self._settings.topic(keys.TOPIC_DECISIONS)
        futures = [
            await self._producer.send(
                topic,
                value=d.model_dump_json(exclude={"until_ms"}).encode(),
                key=d.tenant_id.encode(),
            )
            for d in decisions
        ]
        for future in futures:
            await future

    async def send_alerts(self, alerts: Sequence[Alert]) -> None:
        """Put alerts in the outbox topic that the notifier delivers from."""
        topic = self._settings.topic(keys.TOPIC_ALERTS)
        futures = [
            await self._producer.send(
                topic, value=a.model_dump_json().encode(), key=a.tenant_id.encode()
            )
            for a in alerts
        ]
        for future in futures:
            await future
