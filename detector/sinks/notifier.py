"""The alert notifier: delivers the llm.cost.alerts outbox to Slack, exactly once where it can.

Per alert: look up which message carries it (Redis); if none, post (a new message, a reply in
the thread of its (rule, entity), or a burst summary), then record it; the Kafka offset is
committed only after the records are written. A post is bracketed by a "pending" record before
and a "posted" record after: a notifier that dies between the two finds "pending" on restart
and, with a bot token, asks Slack (the message carries its id in metadata) whether it landed
before posting again. With a webhook Slack cannot be asked, so a notifier killed after Slack
took the post and before Redis recorded it posts that one message again.

A timer looks at open threads: a decision that ended gets a "resolved" reply, a critical alert
whose decision is still in force after the escalation delay goes to the escalation channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from detector import keys
from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.errors import SinkError
from detector.schemas import Action, Alert, Scope, Severity
from detector.sinks.slack import Posted, RetryableSinkError, SlackClient
from detector.sinks.slack_format import (
    Block,
    Extras,
    enforced,
    render_alert,
    render_escalation,
    render_repeat,
    render_resolved,
    render_summary,
    render_text,
)
from detector.sinks.slack_state import MessageRecord, SlackState, Thread
from detector.timefmt import parse_ts_ms, rfc3339
from detector.windows.buckets import DAY_S, bucket_start_ms

log = logging.getLogger(__name__)

RETRY_MAX_S = 30.0
DEFAULT_COOLDOWN_S = 600
CONTRIBUTOR_SCOPES = ("user", "api_key", "feature", "model")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Notifier:
    """Turns alerts into Slack messages and keeps their threads; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        client: SlackClient,
        redis: Redis,
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
        self.lock = asyncio.Lock()  # the outbox and the timer never interleave on one thread

    # --- posting exactly once -----------------------------------------------------------------

    async def post_once(
        self,
        tenant: str,
        message_id: str,
        channel: str | None,
        text: str,
        blocks: list[Block],
        thread_ts: str | None = None,
    ) -> Posted:
        """Post a message unless its record says it was posted; retry until Slack takes it."""
        channel = channel or self.client.default_channel
        record = await self.state.message(tenant, message_id)
        if record is not None and record.state == "posted":
            return Posted(record.channel, record.ts)
        if record is not None and record.state == "refused":
            raise SinkError(f"message {message_id} was refused by Slack before")
        if record is not None and record.state == "pending":
            found = await self._find(record, message_id)
            if found is not None:
                return found
        lookup = await self.state.channel_id(channel) or channel
        started_ms = self.clock()
        await self.state.set_message(
            tenant, message_id, MessageRecord("pending", lookup, None, started_ms, thread_ts)
        )
        delay_s, ambiguous = 0.5, False
        while True:
            if ambiguous:
                pending = MessageRecord("pending", lookup, None, started_ms, thread_ts)
                found = await self._find(pending, message_id)
                if found is not None:
                    await self._record(tenant, message_id, found, started_ms, thread_ts)
                    return found
            try:
                posted = await self.client.post_message(
                    channel, text, blocks, thread_ts=thread_ts, message_id=message_id
                )
                break
            except RetryableSinkError as exc:
                ambiguous = exc.ambiguous
                wait_s = exc.retry_after_s if exc.retry_after_s is not None else delay_s
                log.warning("Slack post %s failed (%s); retrying in %.1fs", message_id, exc, wait_s)
                await asyncio.sleep(wait_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)
            except SinkError:
                refused = MessageRecord("refused", lookup, None, started_ms, thread_ts)
                await self.state.set_message(tenant, message_id, refused)
                raise
        await self._record(tenant, message_id, posted, started_ms, thread_ts)
        await self.state.learn_channel_id(channel, posted.channel)
        return posted

    async def _update(self, channel: str, ts: str, text: str, blocks: list[Block]) -> None:
        """Replace a message's content, retrying as a post does (an update is idempotent)."""
        delay_s = 0.5
        while True:
            try:
                await self.client.update_message(channel, ts, text, blocks)
                return
            except RetryableSinkError as exc:
                wait_s = exc.retry_after_s if exc.retry_after_s is not None else delay_s
                log.warning("Slack update of %s failed (%s); retrying in %.1fs", ts, exc, wait_s)
                await asyncio.sleep(wait_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)

    async def _record(
        self, tenant: str, message_id: str, posted: Posted, started_ms: int, thread: str | None
    ) -> None:
        record = MessageRecord("posted", posted.channel, posted.ts, started_ms, thread)
        await self.state.set_message(tenant, message_id, record)

    async def _find(self, record: MessageRecord, message_id: str) -> Posted | None:
        """Ask Slack whether a post whose outcome is unknown landed (bot token only)."""
        if not self.client.threads:
            return None
        oldest_s = record.started_ms / 1000 - 60
        delay_s = 0.5
        while True:
            try:
                ts = await self.client.find_message(
                    record.channel, message_id, oldest_s, record.thread_ts
                )
                break
            except RetryableSinkError as exc:
                wait_s = exc.retry_after_s if exc.retry_after_s is not None else delay_s
                await asyncio.sleep(wait_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)
        if ts is None:
            return None
        log.info(
            "Slack message %s had landed (answer lost or process killed); not reposted", message_id
        )
        return Posted(record.channel, ts)

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
            found = await self._find(record, carrier)
            if found is None:
                return False
            await self._record(alert.tenant_id, carrier, found, record.started_ms, record.thread_ts)
            record = MessageRecord("posted", found.channel, found.ts, record.started_ms, None)
        if record.thread_ts is None and await self.state.thread(alert) is None:
            # Posted, but the process died before it noted the thread: note it now, so that
            # repeats and the resolved reply still go in this message's thread.
            await self.state.open_thread(
                alert, record.channel, record.ts, _until_ms(alert), self._cooldown_ms(alert),
                self.clock(), summary=carrier != alert.alert_id,
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
            await self._guard(group[0], self._post_summary(tenant, rule_id, group))
        else:
            for alert in group:
                await self._guard(alert, self._post_new(alert))

    async def _post_new(self, alert: Alert) -> None:
        channel = self.client.channel_for(alert.severity)
        extras = await self.extras(alert)
        await self.state.set_carriers(alert.tenant_id, [alert.alert_id], alert.alert_id)
        text, blocks = render_text(alert), render_alert(alert, extras)
        posted = await self.post_once(alert.tenant_id, alert.alert_id, channel, text, blocks)
        until_ms, cooldown_ms = _until_ms(alert), self._cooldown_ms(alert)
        await self.state.open_thread(
            alert, posted.channel, posted.ts, until_ms, cooldown_ms, self.clock()
        )

    async def _repeat(self, alert: Alert, thread: Thread) -> None:
        fired = thread.fired + 1
        await self.state.set_carriers(alert.tenant_id, [alert.alert_id], alert.alert_id)
        if thread.ts is not None and not thread.summary:
            # The first message shows the latest figures; updating it twice is harmless.
            blocks = render_alert(alert, await self.extras(alert), fired=fired)
            await self._update(thread.channel, thread.ts, render_text(alert), blocks)
        if thread.ts is not None:
            text, blocks = render_repeat(alert, fired)
        else:  # a webhook cannot thread: the repeat is a message of its own
            text, blocks = render_text(alert), render_alert(alert, await self.extras(alert), fired)
        await self.post_once(
            alert.tenant_id, alert.alert_id, thread.channel, text, blocks, thread_ts=thread.ts
        )
        await self.state.touch_thread(thread, _until_ms(alert), self.clock(), fired)

    async def _post_summary(self, tenant: str, rule_id: str, group: list[Alert]) -> None:
        message_id = f"burst-{group[0].alert_id}"
        await self.state.set_carriers(tenant, [a.alert_id for a in group], message_id)
        worst = max(group, key=lambda a: list(Severity).index(a.severity))
        text, blocks = render_summary(group, len(group))
        posted = await self.post_once(
            tenant, message_id, self.client.channel_for(worst.severity), text, blocks
        )
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
        await self._update(channel, ts, text, blocks)
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
            for key in await self.state.open_threads():
                thread = await self.state.load_thread(key)
                if thread is None:
                    await self.state.close_thread(key)
                    continue
                try:
                    await self._check(thread)
                except SinkError as exc:
                    log.error("Slack refused a follow-up on %s: %s", key, exc)

    async def _check(self, thread: Thread) -> None:
        alert, now = thread.alert, self.clock()
        if thread.until_ms == 0:  # nothing enforced: the thread closes with its cooldown
            if now >= thread.last_ms + thread.cooldown_ms:
                await self.state.close_thread(thread.key)
            return
        [(override, rule)] = await self.decisions.fetch(
            [(alert.tenant_id, alert.scope, alert.entity_id)]
        )
        live = [d for d in (override, rule) if d is not None and d.until_ms > now]
        if live and live[0].action in (Action.throttle, Action.block):
            if live[0].until_ms > thread.until_ms:
                until_ms = live[0].until_ms
                await self.state.touch_thread(thread, until_ms, thread.last_ms, thread.fired)
            await self._maybe_escalate(thread, now)
            return
        if live:  # an allow override: an operator let the entity through
            how = f"lifted by {live[0].actor or 'an operator'} (allowed until {live[0].until})"
        elif now < thread.until_ms - 1000:
            how = await self._lifted_by(alert)
        else:
            how = "expired"
        await self._resolve(thread, how, now)

    async def _lifted_by(self, alert: Alert) -> str:
        for entry in await self.decisions.audit(alert.tenant_id, 50):
            if entry.lifted and entry.scope == alert.scope and entry.entity_id == alert.entity_id:
                return f"lifted by {entry.actor or 'an operator'} ({entry.reason})"
        return "lifted"

    async def _resolve(self, thread: Thread, how: str, now: int) -> None:
        alert = thread.alert
        message_id = f"{alert.alert_id}-resolved"
        if not await self.state.claim(alert.tenant_id, message_id):
            return
        text, blocks = render_resolved(
            alert.scope.value, alert.entity_id, alert.action.value, how, rfc3339(now)
        )
        await self.post_once(alert.tenant_id, message_id, thread.channel, text, blocks, thread.ts)
        if thread.escalated and thread.escalation_channel:
            await self.post_once(
                alert.tenant_id, f"{message_id}-esc", thread.escalation_channel, text, blocks,
                thread.escalation_ts,
            )  # fmt: skip
        await self.state.close_thread(thread.key)

    async def _maybe_escalate(self, thread: Thread, now: int) -> None:
        channel = self.client.escalation_channel
        delay_s = self.settings.slack_escalation_delay_s
        if (
            channel is None
            or thread.escalated
            or thread.alert.severity is not Severity.critical
            or now < thread.opened_ms + delay_s * 1000
        ):
            return
        alert = thread.alert
        # Every entity of a burst summary escalates into one message.
        message_id = f"{_carrier_id(thread)}-escalated"
        if not await self.state.claim(alert.tenant_id, f"{message_id}-{thread.key}"):
            return
        text, blocks = render_escalation(alert, await self.extras(alert), delay_s, _link(thread))
        posted = await self.post_once(alert.tenant_id, message_id, channel, text, blocks)
        if thread.ts is not None:
            note = f":arrow_double_up: Escalated to {channel}: still in force after {delay_s}s"
            note_blocks: list[Block] = [
                {"type": "section", "text": {"type": "mrkdwn", "text": note}}
            ]
            await self.post_once(
                alert.tenant_id, f"{message_id}-note", thread.channel, note, note_blocks, thread.ts
            )
        await self.state.mark_escalated(thread, posted.channel, posted.ts)

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
        except (RedisError, ValueError) as exc:
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
    return parse_ts_ms(alert.until)


def _carrier_id(thread: Thread) -> str:
    return f"summary-{thread.channel}-{thread.ts}" if thread.summary else thread.alert.alert_id


def _link(thread: Thread) -> str | None:
    """Link to the thread's message, built only from Slack's own channel id and ts."""
    ts = thread.ts
    if ts is None or not thread.channel.isalnum() or not ts.replace(".", "").isdigit():
        return None
    return f"https://slack.com/archives/{thread.channel}/p{ts.replace('.', '')}"
