"""The outbox reader on the real Kafka: it starts where the former faust notifier stopped, and
without Slack it logs alerts and moves on."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from pydantic import SecretStr

from detector import keys
from detector.config import Settings
from detector.schemas import Action, Alert, AlertKind, Scope, Severity
from detector.sinks.outbox import AlertsConsumer, alerts_group
from detector.sinks.slack import SlackClient
from detector.slack_stub import SlackStub
from detector.timefmt import rfc3339

from .conftest import wait_for


def alert(n: int) -> Alert:
    at = rfc3339(time.time_ns() // 1_000_000)
    return Alert(
        alert_id=f"alert-{n}", kind=AlertKind.rule, rule_id="burn", severity=Severity.warning,
        tenant_id="acme", scope=Scope.user, entity_id=f"u{n}", window="1h", metric="cost_usd",
        observed=30.0, threshold=25.0, action=Action.alert, event_time=at, created_at=at,
        message=f"cost_usd over 1h is 30 (> 25) for user u{n}",
    )  # fmt: skip


async def publish(settings: Settings, alerts: list[Alert]) -> int:
    """Publish alerts with one key (one partition); return that partition."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        partition = 0
        for a in alerts:
            meta = await producer.send_and_wait(
                settings.topic(keys.TOPIC_ALERTS), a.model_dump_json().encode(), key=b"acme"
            )
            partition = meta.partition
        return partition
    finally:
        await producer.stop()


async def commit(settings: Settings, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


@pytest.mark.timeout(90)
async def test_upgrade_starts_where_the_faust_notifier_stopped(
    kafka_topics: Settings, slack_stub: SlackStub
) -> None:
    settings = kafka_topics.model_copy(
        update={"slack_webhook_url": SecretStr(slack_stub.webhook_url)}
    )
    partition = await publish(settings, [alert(1), alert(2), alert(3)])
    topic = settings.topic(keys.TOPIC_ALERTS)
    # The faust agent of the previous version had delivered the first two.
    await commit(
        settings,
        settings.consumer_group,
        {TopicPartition(topic, p): (2 if p == partition else 0) for p in range(2)},
    )
    task = asyncio.create_task(AlertsConsumer(settings, SlackClient(settings)).run())
    try:
        await wait_for(lambda: len(slack_stub.messages) >= 1, 60, "the third alert", every_s=0.05)
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(slack_stub.messages) == 1, [m["text"][-30:] for m in slack_stub.messages]
    [message] = slack_stub.messages
    assert message["text"].startswith(
        "WARNING rule burn: cost_usd over 1h is 30 (&gt; 25) for user u3"
    )


@pytest.mark.timeout(90)
async def test_without_slack_alerts_are_logged_and_committed(
    kafka_topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    partition = await publish(kafka_topics, [alert(1), alert(2)])
    caplog.set_level(logging.WARNING, logger="detector.sinks.outbox")
    task = asyncio.create_task(AlertsConsumer(kafka_topics, None).run())
    try:
        await wait_for(lambda: "user u2" in caplog.text, 60, "the alerts in the log", every_s=0.05)
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "ALERT WARNING rule burn: cost_usd over 1h is 30 (&gt; 25) for user u1" in caplog.text
    check = AIOKafkaConsumer(
        bootstrap_servers=kafka_topics.kafka_bootstrap, group_id=alerts_group(kafka_topics)
    )
    await check.start()
    try:
        tp = TopicPartition(kafka_topics.topic(keys.TOPIC_ALERTS), partition)
        assert await check.committed(tp) == 2
    finally:
        await check.stop()
