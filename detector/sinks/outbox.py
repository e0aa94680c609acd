"""The outbox reader: a consumer of llm.cost.alerts, in its own group, feeding the notifier.

Offsets are committed only after the notifier has recorded every alert of a batch in Redis, so
a notifier that dies re-reads them and its records say which were posted. Without a Slack
setting alerts are logged and stay on the topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from detector import keys
from detector.config import Settings
from detector.redis_client import REDIS_ERRORS, connect_redis
from detector.runtime import raise_if_stopping
from detector.schemas import Alert
from detector.sinks.notifier import Notifier
from detector.sinks.slack import SlackClient
from detector.sinks.slack_format import render_text

log = logging.getLogger(__name__)

RETRY_MAX_S = 30.0
Polled = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


class AlertsConsumer:
    """Reads the alerts outbox in batches and hands them to the Slack notifier."""

    def __init__(
        self,
        settings: Settings,
        slack: SlackClient | None,
        cooldown_s: Callable[[str], int | None] = lambda _rule: None,
    ) -> None:
        self.settings = settings
        self.slack = slack
        self.cooldown_s = cooldown_s

    async def run(self) -> None:
        settings = self.settings
        redis = connect_redis(settings)
        notifier = None
        if self.slack is None:
            log.info("no Slack setting: alerts are logged and kept on the alerts topic")
        else:
            notifier = Notifier(settings, self.slack, redis, self.cooldown_s)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=alerts_group(settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="detector-notifier",
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
            # Slack's retries can hold a batch for minutes; the group must not evict us for it.
            max_poll_interval_ms=3_600_000,
        )
        await consumer.start()
        listener = _StartWhereFaustStopped(consumer, settings)
        consumer.subscribe([settings.topic(keys.TOPIC_ALERTS)], listener=listener)
        scanner = asyncio.create_task(self._scan(notifier)) if notifier is not None else None
        try:
            while True:
                raise_if_stopping()
                polled = await consumer.getmany(timeout_ms=500, max_records=500)
                await listener.ready.wait()
                records = [
                    r
                    for tp, batch in polled.items()
                    for r in batch
                    if r.offset >= listener.skip_below.get(tp, 0)
                ]
                if not records:
                    if polled:  # only records the former notifier had delivered
                        await _commit(consumer, polled)
                    continue
                parsed = _parse_alerts(records)
                if notifier is None:
                    for _, alert in parsed:
                        log.warning("ALERT %s", render_text(alert))
                else:
                    await self._deliver(notifier, parsed)
                await _commit(consumer, polled)
        finally:
            if scanner is not None:
                scanner.cancel()
            await consumer.stop()
            await redis.aclose()

    async def _deliver(
        self, notifier: Notifier, parsed: list[tuple[ConsumerRecord[Any, Any], Alert]]
    ) -> None:
        """Deliver a batch; if it hits a bug, alert by alert, skipping the one that fails."""
        if await self._attempt(notifier, [alert for _, alert in parsed]):
            return
        log.error("batch of %d alerts failed; retrying alert by alert", len(parsed))
        for record, alert in parsed:
            if not await self._attempt(notifier, [alert]):
                log.error("alert at %s[%s]@%s failed; skipped",
                          record.topic, record.partition, record.offset)  # fmt: skip

    async def _attempt(self, notifier: Notifier, alerts: list[Alert]) -> bool:
        """True once delivered; held and retried while Redis is unreachable; False on a bug."""
        delay_s = 0.5
        while True:
            raise_if_stopping()
            try:
                await notifier.deliver_batch(alerts)
                return True
            except REDIS_ERRORS as exc:
                log.warning("alerts held, Redis unreachable (%r); retry in %.1fs", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)
            except Exception:
                log.exception("delivering %d alert(s) failed", len(alerts))
                return False

    async def _scan(self, notifier: Notifier) -> None:
        while True:
            raise_if_stopping()
            await asyncio.sleep(self.settings.slack_scan_interval_s)
            try:
                await notifier.scan()
            except REDIS_ERRORS as exc:
                log.warning("Slack follow-ups skipped this round: %r", exc)
            except Exception:
                log.exception("Slack follow-ups failed this round")


def _parse_alerts(
    records: Sequence[ConsumerRecord[Any, Any]],
) -> list[tuple[ConsumerRecord[Any, Any], Alert]]:
    alerts = []
    for r in records:
        try:
            alerts.append((r, Alert.model_validate_json(r.value)))
        except ValueError:
            log.error("%s[%s]@%s is not an alert; skipped", r.topic, r.partition, r.offset)
    return alerts


def alerts_group(settings: Settings) -> str:
    """The notifier's consumer group.

    >>> alerts_group(Settings(consumer_group="det"))
    'det.alerts'
    """
    return f"{settings.consumer_group}.alerts"


class _StartWhereFaustStopped(ConsumerRebalanceListener):  # type: ignore[misc]
    """A partition this group never committed starts where the faust agent that delivered
    alerts before (group `consumer_group`) stopped, so an upgrade resends nothing.

    The records before that point are skipped as they are read: the fetcher starts on new
    partitions while this listener still asks Kafka, so a seek from here comes too late.
    """

    def __init__(self, consumer: AIOKafkaConsumer, settings: Settings) -> None:
        self.consumer = consumer
        self.settings = settings
        self.skip_below: dict[TopicPartition, int] = {}
        self.ready = asyncio.Event()  # set once the offsets of the current assignment are known

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.ready.clear()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        try:
            await self._find_start(assigned)
        finally:
            self.ready.set()

    async def _find_start(self, assigned: list[TopicPartition]) -> None:
        fresh = [tp for tp in assigned if await self.consumer.committed(tp) is None]
        if not fresh:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        try:
            await admin.start()
            old = await admin.list_consumer_group_offsets(
                self.settings.consumer_group, partitions=fresh
            )
        except KafkaError as exc:
            log.warning("could not read the former notifier's offsets: %r", exc)
            return
        finally:
            await admin.close()
        for tp, meta in old.items():
            if tp in fresh and meta is not None and meta.offset >= 0:
                log.info("%s[%s]: starting at %d, where the former notifier stopped",
                         tp.topic, tp.partition, meta.offset)  # fmt: skip
                self.skip_below[tp] = meta.offset


async def _commit(consumer: AIOKafkaConsumer, polled: Polled) -> None:
    offsets = {tp: batch[-1].offset + 1 for tp, batch in polled.items() if batch}
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        # A rebalance: the new owner re-reads these alerts and finds them recorded in Redis.
        log.warning("alert offsets not committed (%r); the records in Redis prevent reposts", exc)
