"""The alert notifier: turns the llm.cost.alerts outbox into Slack messages and threads.

Per alert: find which message carries it (Redis); if none, post a new message, a reply in the
thread of its (rule, entity), or a burst summary, through `OncePoster` (exactly once, see
slack_delivery.py). The worker commits the alert's Kafka offset only after this returns.
A timer runs `FollowUps` (resolved replies, escalations) under the same lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from detector import keys
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.errors import SinkError
from detector.redis_client import REDIS_ERRORS, RedisClient
from detector.schemas import Alert, Scope, Severity
from detector.sinks.followups import FollowUps
from detector.sinks.slack import Posted, RetryableSinkError, SlackClient
from detector.sinks.slack_delivery import OncePoster, now_ms
from detector.sinks.slack_format import (
    Block,
    Extras,
    enforced,
    escape,
    render_alert,
    render_repeat,
    render_summary,
    render_text,
)
from detector.sinks.slack_state import MessageRecord, SlackState, Thread
from detector.timefmt import parse_ts_ms, rfc3339
from detector.windows.buckets import DAY_S, bucket_start_ms

log = logging.getLogger(__name__)

DEFAULT_COOLDOWN_S = 600
CONTRIBUTOR_SCOPES = ("user", "api_key", "feature", "model")
SUMMARY_PREFIX = "burst-"  # message ids of burst summaries


class Notifier:
    """Turns alerts into Slack messages and keeps their threads; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        client: SlackClient,
        redis: RedisClient,
        cooldown_s: Callable[[str], int | None] = lambda _rule: None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self.client = client
        self.redis = redis
        self.state = SlackState(redis)
        self.decisions = DecisionStore(redis)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.poster = OncePoster(client, self.state, clock)
        self.post_once = self.poster.post_once
        self.followups = FollowUps(settings, self.poster, self.decisions, self.extras)
        self.lock = asyncio.Lock()  # the outbox and the timer never interleave on one thread

    # --- the outbox ---------------------------------------------------------------------------

    async def deliver_batch(self, alerts: Sequence[Alert]) -> None:
        """Deliver a batch read from the outbox; returns once each alert is posted or refused."""
        async with self.lock:
            fresh: list[Alert] = []
            seen: set[str] = set()
            for alert in alerts:
                if alert.alert_id in seen or await self._delivered(alert):
                    continue
                seen.add(alert.alert_id)
                fresh.append(alert)
            groups: dict[tuple[str, str], list[Alert]] = {}
            later: list[Alert] = []  # a second alert of a (rule, entity) new in this batch
            starting: set[tuple[str, str, str, str]] = set()
            for alert in fresh:
                who = (alert.tenant_id, alert.rule_id, alert.scope.value, alert.entity_id)
                thread = await self.state.thread(alert)
                if thread is not None:
                    await self._guard(alert, self._repeat(alert, thread))
                elif who in starting:
                    later.append(alert)
                else:
                    starting.add(who)
                    groups.setdefault((alert.tenant_id, alert.rule_id), []).append(alert)
            for (tenant, rule_id), group in groups.items():
                await self._deliver_group(tenant, rule_id, group)
            for alert in later:
                thread = await self.state.thread(alert)
                step = self._post_new(alert) if thread is None else self._repeat(alert, thread)
                await self._guard(alert, step)

    async def _delivered(self, alert: Alert) -> bool:
        carrier = await self.state.carrier(alert.tenant_id, alert.alert_id)
        if carrier is None:
            return False
        record = await self.state.message(alert.tenant_id, carrier)
        if record is None:
            return False
        if record.state == "refused":
            return True
        if record.state == "pending":
            found = await self.poster.find(record, carrier)
            if found is None:
                return False
            await self.poster.record(
                alert.tenant_id, carrier, found, record.started_ms, record.thread_ts
            )
            record = MessageRecord("posted", found.channel, found.ts, record.started_ms, None)
        if record.thread_ts is None and await self.state.thread(alert) is None:
            # Posted, but the process died before it noted the thread: note it now, so that
            # repeats and the resolved reply still go in this message's thread.
            await self.state.open_thread(
                alert, record.channel, record.ts, _until_ms(alert), self._cooldown_ms(alert),
                self.clock(), summary=carrier.startswith(SUMMARY_PREFIX),
            )  # fmt: skip
        return True

    async def _guard(self, alert: Alert, step: Any) -> None:
        """Run one delivery step; a message Slack refuses is logged and not retried."""
        try:
            await step
        except RetryableSinkError:
            raise  # only raised by bugs: posts and updates retry these themselves
        except SinkError as exc:
            log.error(
                "alert %s refused by Slack, left on the alerts topic: %s", alert.alert_id, exc
            )

    async def _deliver_group(self, tenant: str, rule_id: str, group: list[Alert]) -> None:
        window_s = self.settings.slack_burst_window_s
        before = await self.state.recent(tenant, rule_id, len(group), window_s)
        burst = await self.state.burst(tenant, rule_id) if self.client.threads else None
        if burst is not None:
            await self._guard(group[0], self._join_summary(tenant, rule_id, group, burst))
        elif len(group) >= 2 and before + len(group) >= self.settings.slack_burst_min:
            await self._guard(group[0], self._post_summary(tenant, rule_id, group, before))
        else:
            for alert in group:
                await self._guard(alert, self._post_new(alert))

    async def _post_new(self, alert: Alert) -> None:
        channel = self.client.channel_for(alert.severity)
        extras = await self.extras(alert)
        text, blocks = render_text(alert), render_alert(alert, extras)
        posted = await self._post_routed(
            alert.tenant_id, alert.alert_id, [alert.alert_id], channel, text, blocks
        )
        until_ms, cooldown_ms = _until_ms(alert), self._cooldown_ms(alert)
        await self.state.open_thread(
            alert, posted.channel, posted.ts, until_ms, cooldown_ms, self.clock()
        )

    async def _post_routed(
        self,
        tenant: str,
        message_id: str,
        alert_ids: list[str],
        channel: str,
        text: str,
        blocks: list[Block],
    ) -> Posted:
        """Post to a severity's channel; if Slack refuses that channel, to the default one."""
        await self.state.set_carriers(tenant, alert_ids, message_id)
        try:
            return await self.post_once(tenant, message_id, channel, text, blocks)
        except RetryableSinkError:
            raise
        except SinkError as exc:
            default = self.client.default_channel
            if not self.client.threads or channel == default:
                raise
            log.error("Slack refused %s in %s (%s); posting it in %s", message_id, channel, exc,
                      default)  # fmt: skip
            fallback_id = f"{message_id}-fallback"
            await self.state.set_carriers(tenant, alert_ids, fallback_id)
            note = f"Posted here because {escape(channel)} refused it: {escape(str(exc)[:200])}"
            blocks = [*blocks, {"type": "context", "elements": [{"type": "mrkdwn", "text": note}]}]
            return await self.post_once(tenant, fallback_id, default, text, blocks)

    async def _repeat(self, alert: Alert, thread: Thread) -> None:
        fired = thread.fired + 1
        await self.state.set_carriers(alert.tenant_id, [alert.alert_id], alert.alert_id)
        if thread.ts is not None and not thread.summary:
            # The first message shows the latest figures; updating it twice is harmless.
            blocks = render_alert(alert, await self.extras(alert), fired=fired)
            await self.poster.update(thread.channel, thread.ts, render_text(alert), blocks)
        if thread.ts is not None:
            text, blocks = render_repeat(alert, fired)
        else:  # a webhook cannot thread: the repeat is a message of its own
            text, blocks = render_text(alert), render_alert(alert, await self.extras(alert), fired)
        await self.post_once(
            alert.tenant_id, alert.alert_id, thread.channel, text, blocks, thread_ts=thread.ts
        )
        await self.state.touch_thread(thread, _until_ms(alert), self.clock(), fired)

    async def _post_summary(
        self, tenant: str, rule_id: str, group: list[Alert], separately: int
    ) -> None:
        message_id = f"{SUMMARY_PREFIX}{group[0].alert_id}"
        worst = max(group, key=lambda a: list(Severity).index(a.severity))
        text, blocks = render_summary(group, len(group), separately)
        channel = self.client.channel_for(worst.severity)
        ids = [a.alert_id for a in group]
        posted = await self._post_routed(tenant, message_id, ids, channel, text, blocks)
        window_s = self.settings.slack_burst_window_s
        if posted.ts is not None:
            burst = (posted.channel, posted.ts, message_id)
            await self.state.join_burst(tenant, rule_id, group, window_s, burst)
        await self._open_summary_threads(group, posted)

    async def _join_summary(
        self, tenant: str, rule_id: str, group: list[Alert], burst: tuple[str, str, str]
    ) -> None:
        channel, ts, message_id = burst
        window_s = self.settings.slack_burst_window_s
        members = await self.state.join_burst(tenant, rule_id, group, window_s)
        text, blocks = render_summary(members, len(members))
        await self.poster.update(channel, ts, text, blocks)
        await self.state.set_carriers(tenant, [a.alert_id for a in group], message_id)
        await self._open_summary_threads(group, Posted(channel, ts))

    async def _open_summary_threads(self, group: list[Alert], posted: Posted) -> None:
        now = self.clock()
        for alert in group:
            await self.state.open_thread(
                alert, posted.channel, posted.ts, _until_ms(alert), self._cooldown_ms(alert), now,
                summary=True,
            )  # fmt: skip

    # --- the timer: resolved replies and escalations -------------------------------------------

    async def scan(self) -> None:
        """Post "resolved" for decisions that ended and escalate critical ones still in force."""
        async with self.lock:
            await self.followups.scan()

    # --- contributors ---------------------------------------------------------------------------

    async def extras(self, alert: Alert) -> Extras:
        """Top spenders for a tenant (or global) alert, from the daily roll-ups: 4 reads."""
        if alert.contributors or alert.scope not in (Scope.tenant, Scope.global_):
            return Extras()
        try:
            day_ms = bucket_start_ms(parse_ts_ms(alert.event_time), DAY_S)
            pipe = self.redis.pipeline(transaction=False)
            if alert.scope is Scope.global_:
                scopes: tuple[str, ...] = ("tenant",)
                pipe.zrevrange(keys.rank_key(keys.GLOBAL_TENANT, "tenant", day_ms), 0, 4, True)
            else:
                scopes = CONTRIBUTOR_SCOPES
                for scope in scopes:
                    pipe.zrevrange(keys.rank_key(alert.tenant_id, scope, day_ms), 0, 2, True)
            replies = await pipe.execute()
        except REDIS_ERRORS + (ValueError,) as exc:
            log.warning("no contributors for alert %s: %r", alert.alert_id, exc)
            return Extras()
        items: list[dict[str, str | float]] = []
        for scope, pairs in zip(scopes, replies, strict=True):
            for member, micros in pairs:
                name = member.decode() if isinstance(member, bytes) else str(member)
                items.append({"scope": scope, "id": name, "cost_usd": micros / 1e6})
        items.sort(key=lambda c: -float(c["cost_usd"]))
        return Extras(items, f"(UTC day {rfc3339(day_ms)[:10]} so far, from the daily roll-ups)")

    def _cooldown_ms(self, alert: Alert) -> int:
        return (self.cooldown_s(alert.rule_id) or DEFAULT_COOLDOWN_S) * 1000


def _until_ms(alert: Alert) -> int:
    """End of the decision an alert announced; 0 when it enforces nothing."""
    if not enforced(alert) or alert.until is None:
        return 0
    try:
        return parse_ts_ms(alert.until)
    except ValueError:
        # The message is still posted; without an end its thread closes with the cooldown.
        log.warning("alert %s has an unreadable `until` %r", alert.alert_id, alert.until[:40])
        return 0
