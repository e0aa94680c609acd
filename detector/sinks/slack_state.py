"""The Slack notifier's memory in Redis, so that a restarted notifier neither reposts nor
forgets its threads: message records (pending / posted / refused), which message carries each
alert, the thread of each (rule, entity), burst summaries, and the set of open threads."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from detector import keys
from detector.redis_client import RedisClient
from detector.schemas import Alert

RECORD_TTL_S = keys.SLACK_RECORD_TTL_S
HashKey = bytes | bytearray | memoryview | str | int | float  # what redis-py's hset accepts
THREAD_GRACE_MS = 3600 * 1000  # a thread outlives its decision this long, to post "resolved"


@dataclass(frozen=True, slots=True)
class MessageRecord:
    state: str  # "pending", "posted" or "refused"
    channel: str
    ts: str | None
    started_ms: int
    thread_ts: str | None = None


@dataclass(frozen=True, slots=True)
class Thread:
    """The message that stands for one (rule, entity) while its alert or decision lasts."""

    key: str
    channel: str
    ts: str | None
    alert: Alert  # the first alert of the thread
    until_ms: int  # end of the decision it announced (0: nothing enforced)
    opened_ms: int
    last_ms: int
    fired: int
    cooldown_ms: int
    escalated: bool
    summary: bool  # the message is a burst summary shared with other entities
    escalation_ts: str | None
    escalation_channel: str | None


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


class SlackState:
    """Redis reads and writes of the notifier; every key comes from keys.py."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    # --- messages and alerts ------------------------------------------------------------------

    async def message(self, tenant: str, message_id: str) -> MessageRecord | None:
        raw = await self.redis.get(keys.slack_message_key(tenant, message_id))
        if raw is None:
            return None
        data = orjson.loads(raw)
        return MessageRecord(
            data["state"], data["channel"], data.get("ts"), data["started_ms"], data.get("thread")
        )

    async def set_message(self, tenant: str, message_id: str, record: MessageRecord) -> None:
        body = {
            "state": record.state,
            "channel": record.channel,
            "ts": record.ts,
            "started_ms": record.started_ms,
            "thread": record.thread_ts,
        }
        key = keys.slack_message_key(tenant, message_id)
        await self.redis.set(key, orjson.dumps(body), ex=RECORD_TTL_S)

    async def carrier(self, tenant: str, alert_id: str) -> str | None:
        """The message id carrying an alert, if it was (or is being) delivered."""
        return _text(await self.redis.get(keys.slack_alert_key(tenant, alert_id)))

    async def set_carriers(self, tenant: str, alert_ids: list[str], message_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for alert_id in alert_ids:
            pipe.set(keys.slack_alert_key(tenant, alert_id), message_id, ex=RECORD_TTL_S)
        await pipe.execute()

    async def claim(self, tenant: str, message_id: str, lease_s: int = 30) -> bool:
        """A short lease so that one notifier process at a time posts a timer-driven message."""
        key = keys.slack_claim_key(tenant, message_id)
        return bool(await self.redis.set(key, b"1", nx=True, ex=lease_s))

    async def channel_id(self, name: str) -> str | None:
        return _text(await self.redis.hget(keys.slack_channel_ids_key(), name))

    async def learn_channel_id(self, name: str, channel_id: str) -> None:
        if name != channel_id:
            await self.redis.hset(keys.slack_channel_ids_key(), name, channel_id)

    # --- threads ------------------------------------------------------------------------------

    async def thread(self, alert: Alert) -> Thread | None:
        key = keys.slack_thread_key(alert.tenant_id, alert.rule_id, alert.scope, alert.entity_id)
        return await self.load_thread(key)

    async def load_thread(self, key: str) -> Thread | None:
        raw = await self.redis.hgetall(key)
        if not raw:
            return None
        f = {_text(k): _text(v) for k, v in raw.items()}
        if not f.get("alert"):
            # Only a racing update of a thread closed meanwhile leaves a partial hash.
            return None
        return Thread(
            key=key,
            channel=f["channel"] or "",
            ts=f.get("ts") or None,
            alert=Alert.model_validate_json(f["alert"] or "{}"),
            until_ms=int(f.get("until_ms") or 0),
            opened_ms=int(f.get("opened_ms") or 0),
            last_ms=int(f.get("last_ms") or 0),
            fired=int(f.get("fired") or 1),
            cooldown_ms=int(f.get("cooldown_ms") or 0),
            escalated=f.get("escalated") == "1",
            summary=f.get("summary") == "1",
            escalation_ts=f.get("escalation_ts") or None,
            escalation_channel=f.get("escalation_channel") or None,
        )

    async def open_thread(
        self,
        alert: Alert,
        channel: str,
        ts: str | None,
        until_ms: int,
        cooldown_ms: int,
        now_ms: int,
        summary: bool = False,
    ) -> None:
        key = keys.slack_thread_key(alert.tenant_id, alert.rule_id, alert.scope, alert.entity_id)
        fields: dict[HashKey, HashKey] = {
            "channel": channel,
            "ts": ts or "",
            "alert": alert.model_dump_json(),
            "until_ms": until_ms,
            "opened_ms": now_ms,
            "last_ms": now_ms,
            "fired": 1,
            "cooldown_ms": cooldown_ms,
            "escalated": 0,
            "summary": int(summary),
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, _thread_ttl_ms(until_ms, now_ms + cooldown_ms, now_ms))
        await pipe.execute()
        await self.redis.zadd(keys.SLACK_OPEN_KEY, {key: now_ms})

    async def touch_thread(self, thread: Thread, until_ms: int, now_ms: int, fired: int) -> None:
        """Record one more firing (or a longer decision) on a thread and push back its end."""
        until_ms = max(until_ms, thread.until_ms)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(thread.key, mapping={"until_ms": until_ms, "last_ms": now_ms, "fired": fired})
        pipe.pexpire(thread.key, _thread_ttl_ms(until_ms, now_ms + thread.cooldown_ms, now_ms))
        await pipe.execute()

    async def mark_escalated(self, thread: Thread, channel: str, ts: str | None) -> None:
        mapping: dict[HashKey, HashKey] = {
            "escalated": 1,
            "escalation_channel": channel,
            "escalation_ts": ts or "",
        }
        await self.redis.hset(thread.key, mapping=mapping)

    async def close_thread(self, key: str) -> None:
        await self.redis.delete(key)
        await self.redis.zrem(keys.SLACK_OPEN_KEY, key)

    async def open_threads(self, limit: int = 1000) -> list[str]:
        members = await self.redis.zrange(keys.SLACK_OPEN_KEY, 0, limit - 1)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    # --- bursts -------------------------------------------------------------------------------

    async def recent(self, tenant: str, rule_id: str, added: int, window_s: int) -> int:
        """Add `added` alerts to a rule's count in the burst window; return the count before."""
        key = keys.slack_recent_key(tenant, rule_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.incrby(key, added)
        pipe.expire(key, window_s, nx=True)
        total, _ = await pipe.execute()
        return int(total) - added

    async def burst(self, tenant: str, rule_id: str) -> tuple[str, str, str] | None:
        """(channel, ts, message id) of the rule's current burst summary, if any."""
        raw = await self.redis.hgetall(keys.slack_burst_key(tenant, rule_id))
        f = {_text(k): _text(v) for k, v in raw.items()}
        if not f.get("ts"):
            return None
        return f["channel"] or "", f["ts"] or "", f["message_id"] or ""

    async def join_burst(
        self,
        tenant: str,
        rule_id: str,
        alerts: list[Alert],
        window_s: int,
        posted: tuple[str, str, str] | None = None,
    ) -> list[Alert]:
        """Add alerts to the burst's members (one per entity); return every member."""
        key = keys.slack_burst_key(tenant, rule_id)
        members_key = keys.slack_burst_members_key(tenant, rule_id)
        pipe = self.redis.pipeline(transaction=True)
        if posted is not None:
            channel, ts, message_id = posted
            pipe.hset(key, mapping={"channel": channel, "ts": ts, "message_id": message_id})
        pipe.hset(members_key, mapping={a.entity_id: a.model_dump_json() for a in alerts})
        pipe.expire(key, window_s)
        pipe.expire(members_key, window_s)
        pipe.hvals(members_key)
        replies = await pipe.execute()
        return [Alert.model_validate_json(v) for v in replies[-1]]


def _thread_ttl_ms(until_ms: int, cooldown_end_ms: int, now_ms: int) -> int:
    return max(until_ms, cooldown_end_ms) - now_ms + THREAD_GRACE_MS
