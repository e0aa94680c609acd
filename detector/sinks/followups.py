"""Follow-ups on posted alerts, run by a timer: a "resolved" reply in the thread when a
decision ends (expired, lifted, or replaced by an allow override), and one escalation message
when a critical alert's decision is still in force after the escalation delay."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

from detector.config import Settings
from detector.decisions.store import DecisionStore
from detector.errors import SinkError
from detector.schemas import Action, Alert, Severity
from detector.sinks.slack_delivery import OncePoster
from detector.sinks.slack_format import (
    Block,
    Extras,
    escape,
    render_escalation,
    render_resolved,
    render_resolved_many,
)
from detector.sinks.slack_state import SlackState, Thread
from detector.timefmt import rfc3339

log = logging.getLogger(__name__)


class FollowUps:
    """Looks at every open thread and posts what its decision's fate calls for."""

    def __init__(
        self,
        settings: Settings,
        poster: OncePoster,
        decisions: DecisionStore,
        extras: Callable[[Alert], Awaitable[Extras]],
    ) -> None:
        self.settings = settings
        self.poster = poster
        self.state: SlackState = poster.state
        self.decisions = decisions
        self.extras = extras
        self.clock = poster.clock

    async def scan(self) -> None:
        """Post "resolved" for decisions that ended and escalate critical ones still in force."""
        # Entities of one burst summary that end together get one reply between them.
        shared: dict[tuple[str, str], list[tuple[Thread, str]]] = {}
        for key in await self.state.open_threads():
            thread = await self.state.load_thread(key)
            if thread is None:
                await self.state.close_thread(key)
                continue
            how = await self._check(thread)
            if how is None:
                continue
            if thread.summary and thread.ts is not None:
                shared.setdefault((thread.channel, thread.ts), []).append((thread, how))
            else:
                await self._resolve([(thread, how)])
        for ended in shared.values():
            await self._resolve(ended)

    async def _check(self, thread: Thread) -> str | None:
        """How the thread's decision ended, or None while it lasts (escalating when due)."""
        alert, now = thread.alert, self.clock()
        if thread.until_ms == 0:  # nothing enforced: the thread closes with its cooldown
            if now >= thread.last_ms + thread.cooldown_ms:
                await self.state.close_thread(thread.key)
            return None
        [(override, rule)] = await self.decisions.fetch(
            [(alert.tenant_id, alert.scope, alert.entity_id)]
        )
        live = [d for d in (override, rule) if d is not None and d.until_ms > now]
        if live and live[0].action in (Action.throttle, Action.block):
            if live[0].until_ms > thread.until_ms:
                until_ms = live[0].until_ms
                await self.state.touch_thread(thread, until_ms, thread.last_ms, thread.fired)
            await self._maybe_escalate(thread, now)
            return None
        if live:  # an allow override: an operator let the entity through
            return f"lifted by {live[0].actor or 'an operator'} (allowed until {live[0].until})"
        if now < thread.until_ms - 1000:
            return await self._lifted_by(alert)
        return "expired"

    async def _lifted_by(self, alert: Alert) -> str:
        for entry in await self.decisions.audit(alert.tenant_id, 50):
            if entry.lifted and entry.scope == alert.scope and entry.entity_id == alert.entity_id:
                return f"lifted by {entry.actor or 'an operator'} ({entry.reason})"
        return "lifted"

    async def _resolve(self, ended: list[tuple[Thread, str]]) -> None:
        """One "resolved" reply for threads sharing a message; then they are closed."""
        thread, how = ended[0]
        alert, at = thread.alert, rfc3339(self.clock())
        if len(ended) == 1:
            message_id = f"{alert.alert_id}-resolved"
            text, blocks = render_resolved(
                alert.scope.value, alert.entity_id, alert.action.value, how, at
            )
        else:
            names = "|".join(sorted(t.key for t, _ in ended))
            digest = hashlib.blake2b(names.encode(), digest_size=8).hexdigest()
            message_id = f"{_carrier_id(thread)}-resolved-{digest}"
            text, blocks = render_resolved_many(
                [
                    (t.alert.scope.value, t.alert.entity_id, t.alert.action.value, h)
                    for t, h in ended
                ],
                at,
            )
        if not await self.state.claim(alert.tenant_id, message_id):
            return
        try:
            await self.poster.post_once(
                alert.tenant_id, message_id, thread.channel, text, blocks, thread.ts
            )
            if thread.escalated and thread.escalation_channel:
                await self.poster.post_once(
                    alert.tenant_id, f"{message_id}-esc", thread.escalation_channel, text, blocks,
                    thread.escalation_ts,
                )  # fmt: skip
        except SinkError as exc:
            log.error("Slack refused the resolved reply %s; not retried: %s", message_id, exc)
        for closed, _ in ended:
            await self.state.close_thread(closed.key)

    async def _maybe_escalate(self, thread: Thread, now: int) -> None:
        channel = self.poster.client.escalation_channel
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
        try:
            posted = await self.poster.post_once(alert.tenant_id, message_id, channel, text, blocks)
            if thread.ts is not None:
                note = (
                    f":arrow_double_up: Escalated to {escape(channel)}: still in force after "
                    f"{delay_s}s"
                )
                note_blocks: list[Block] = [
                    {"type": "section", "text": {"type": "mrkdwn", "text": note}}
                ]
                await self.poster.post_once(
                    alert.tenant_id, f"{message_id}-note", thread.channel, note, note_blocks,
                    thread.ts,
                )  # fmt: skip
        except SinkError as exc:
            log.error("Slack refused the escalation %s; not retried: %s", message_id, exc)
            await self.state.mark_escalated(thread, channel, None)
            return
        await self.state.mark_escalated(thread, posted.channel, posted.ts)


def _carrier_id(thread: Thread) -> str:
    return f"summary-{thread.channel}-{thread.ts}" if thread.summary else thread.alert.alert_id


def _link(thread: Thread) -> str | None:
    """Link to the thread's message, built only from Slack's own channel id and ts."""
    ts = thread.ts
    if ts is None or not thread.channel.isalnum() or not ts.replace(".", "").isdigit():
        return None
    return f"https://slack.com/archives/{thread.channel}/p{ts.replace('.', '')}"
