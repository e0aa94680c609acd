"""Posting to Slack exactly once, across retries and restarts.

A post is bracketed by a "pending" record in Redis before and a "posted" record (channel, ts)
after. A message whose record says posted is never posted again. One left pending (the process
died, or Slack answered 5xx or not at all) is looked up in Slack before it is posted again: each
message carries its id in metadata, and conversations.history (or .replies, in a thread) finds
it. With a webhook Slack cannot be asked, so there a post that Slack took just before the process
died, and before Redis recorded it, is posted again: the one duplicate left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from detector.errors import SinkError
from detector.runtime import raise_if_stopping
from detector.sinks.slack import Posted, RetryableSinkError, SlackClient
from detector.sinks.slack_format import Block
from detector.sinks.slack_state import MessageRecord, SlackState

log = logging.getLogger(__name__)

RETRY_MAX_S = 30.0
LOOKBACK_S = 60  # how far before a pending post's start the lookup reads


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class OncePoster:
    """Posts and updates Slack messages with retries; each message id is posted at most once."""

    def __init__(
        self, client: SlackClient, state: SlackState, clock: Callable[[], int] = now_ms
    ) -> None:
        self.client = client
        self.state = state
        self.clock = clock

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
        started_ms = self.clock()
        if record is not None and record.state == "pending":
            found = await self.find(record, message_id)
            if found is not None:
                await self.record(tenant, message_id, found, record.started_ms, thread_ts)
                return found
            started_ms = record.started_ms  # later lookups also cover the earlier attempt
        lookup = await self.state.channel_id(channel) or channel
        await self.state.set_message(
            tenant, message_id, MessageRecord("pending", lookup, None, started_ms, thread_ts)
        )
        delay_s, ambiguous = 0.5, False
        while True:
            raise_if_stopping()
            if ambiguous:
                pending = MessageRecord("pending", lookup, None, started_ms, thread_ts)
                found = await self.find(pending, message_id)
                if found is not None:
                    await self.record(tenant, message_id, found, started_ms, thread_ts)
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
        await self.record(tenant, message_id, posted, started_ms, thread_ts)
        await self.state.learn_channel_id(channel, posted.channel)
        return posted

    async def update(self, channel: str, ts: str, text: str, blocks: list[Block]) -> None:
        """Replace a message's content, retrying as a post does (an update is idempotent)."""
        delay_s = 0.5
        while True:
            raise_if_stopping()
            try:
                await self.client.update_message(channel, ts, text, blocks)
                return
            except RetryableSinkError as exc:
                wait_s = exc.retry_after_s if exc.retry_after_s is not None else delay_s
                log.warning("Slack update of %s failed (%s); retrying in %.1fs", ts, exc, wait_s)
                await asyncio.sleep(wait_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)

    async def record(
        self, tenant: str, message_id: str, posted: Posted, started_ms: int, thread: str | None
    ) -> None:
        record = MessageRecord("posted", posted.channel, posted.ts, started_ms, thread)
        await self.state.set_message(tenant, message_id, record)

    async def find(self, record: MessageRecord, message_id: str) -> Posted | None:
        """Ask Slack whether a post whose outcome is unknown landed (bot token only)."""
        if not self.client.threads:
            return None
        oldest_s = record.started_ms / 1000 - LOOKBACK_S
        delay_s = 0.5
        while True:
            raise_if_stopping()
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
