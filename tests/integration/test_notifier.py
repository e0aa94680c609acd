"""The Slack notifier against the real Redis and a local Slack stand-in: routing, threads,
updates, burst summaries, resolved replies, escalation, retries and exactly-once records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from detector.config import Settings
from detector.decisions.policy import lift_record
from detector.decisions.store import DecisionStore
from detector.schemas import Action, Alert, AlertKind, Decision, Scope, Severity
from detector.sinks.notifier import Notifier
from detector.sinks.slack import SlackClient
from detector.sinks.slack_format import lift_hint
from detector.slack_stub import SlackStub
from detector.timefmt import rfc3339

NotifierFactory = Callable[..., Notifier]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_alert(
    n: int,
    entity: str = "u1",
    rule_id: str = "burn",
    severity: Severity = Severity.warning,
    action: Action = Action.block,
    until_ms: int | None = None,
    scope: Scope = Scope.user,
    tenant: str = "acme",
) -> Alert:
    at = now_ms()
    until = until_ms if until_ms is not None else at + 600_000
    enforcing = action in (Action.block, Action.throttle)
    return Alert(
        alert_id=f"a{n}-{entity}"[:60],
        kind=AlertKind.rule,
        rule_id=rule_id,
        severity=severity,
        tenant_id=tenant,
        scope=scope,
        entity_id=entity,
        window="1h",
        metric="cost_usd",
        observed=30.0 + n,
        threshold=25.0,
        action=action,
        until=rfc3339(until) if enforcing else None,
        event_time=rfc3339(at - 1000),
        created_at=rfc3339(at),
        message=f"cost_usd over 1h is {30 + n} (> 25) for {scope.value} {entity}",
    )


def decision_for(alert: Alert, until_ms: int) -> Decision:
    return Decision(
        tenant_id=alert.tenant_id,
        scope=alert.scope,
        entity_id=alert.entity_id,
        action=alert.action,
        until=rfc3339(until_ms),
        until_ms=until_ms,
        rule_id=alert.rule_id,
        reason="test",
        decided_at=rfc3339(now_ms()),
    )


@pytest.fixture
def notifier_factory(
    slack_stub: SlackStub, settings_factory: Callable[..., Settings], redis: Redis
) -> NotifierFactory:
    def build(webhook: bool = False, **overrides: Any) -> Notifier:
        if webhook:
            values: dict[str, Any] = {"slack_webhook_url": SecretStr(slack_stub.webhook_url)}
        else:
            values = {
                "slack_bot_token": SecretStr("xoxb-test"),
                "slack_channel": "#llm-spend",
                "slack_base_url": slack_stub.api_url,
            }
        values.update(overrides)
        settings = settings_factory(**values)
        return Notifier(settings, SlackClient(settings), redis, lambda _rule: 60)

    return build


def ids_posted(stub: SlackStub) -> list[str]:
    return [str(m["metadata"]["event_payload"]["id"]) for m in stub.messages if m.get("metadata")]


async def test_routes_by_severity_with_a_bot_token(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    notifier = notifier_factory(slack_channels="critical=#spend-oncall")
    await notifier.deliver_batch(
        [make_alert(1, "u1", severity=Severity.critical), make_alert(2, "u2")]
    )
    critical, warning = slack_stub.messages
    assert critical["channel"] == "#spend-oncall" and warning["channel"] == "#llm-spend"
    assert critical["_auth"] == "Bearer xoxb-test"
    assert ids_posted(slack_stub) == ["a1-u1", "a2-u2"]
    assert critical["unfurl_links"] is False


async def test_repeat_updates_the_first_message_and_replies_in_its_thread(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    notifier = notifier_factory()
    await notifier.deliver_batch([make_alert(1)])
    await notifier.deliver_batch([make_alert(2)])
    await notifier.deliver_batch([make_alert(3)])
    first, *replies = slack_stub.messages
    assert len(slack_stub.in_channel("#llm-spend")) == 1
    assert [r["thread_ts"] for r in replies] == [first["ts"], first["ts"]]
    assert replies[1]["text"].startswith("fired again: cost_usd over 1h is 33")
    assert ":repeat: Fired again (3 times so far)" in replies[1]["blocks"][0]["text"]["text"]
    update = slack_stub.updates[-1]
    assert update["ts"] == first["ts"] and update["channel"] == first["channel_id"]
    assert update["blocks"][-1]["elements"][0]["text"].endswith("fired 3 times, latest shown")
    assert "*33* `cost_usd`" in update["blocks"][1]["fields"][2]["text"]


async def test_a_restarted_notifier_posts_nothing_twice_and_keeps_threading(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    alerts = [make_alert(1), make_alert(2, "u2")]
    await notifier_factory().deliver_batch(alerts)
    restarted = notifier_factory()  # new process: only Redis remembers
    await restarted.deliver_batch(alerts)
    assert ids_posted(slack_stub) == ["a1-u1", "a2-u2"]
    await restarted.deliver_batch([make_alert(3)])
    assert slack_stub.messages[-1]["thread_ts"] == slack_stub.messages[0]["ts"]


async def test_retries_honour_retry_after_and_server_errors(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    slack_stub.fail_next.extend([429, 429])
    slack_stub.retry_after_s = 1
    started = time.monotonic()
    await notifier_factory().deliver_batch([make_alert(1)])
    assert time.monotonic() - started >= 2.0  # two Retry-After: 1 waits
    assert slack_stub.statuses == [429, 429, 200]
    assert ids_posted(slack_stub) == ["a1-u1"]


async def test_a_post_that_landed_but_answered_500_is_not_posted_again(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    slack_stub.post_then_fail.append(500)
    await notifier_factory().deliver_batch([make_alert(1)])
    # Slack took the post and answered 500; before retrying, the notifier looked it up.
    assert ids_posted(slack_stub) == ["a1-u1"]
    assert slack_stub.requests == 3  # the post, conversations.list, conversations.history


async def test_pending_record_from_a_killed_notifier_is_checked_in_slack(
    notifier_factory: NotifierFactory, slack_stub: SlackStub, redis: Redis
) -> None:
    alert = make_alert(1)
    first = notifier_factory()
    # Reproduce a notifier killed after Slack took the post and before Redis recorded it.
    await first.state.set_carriers("acme", [alert.alert_id], alert.alert_id)
    posted = await first.post_once("acme", alert.alert_id, None, "t", [])
    await redis.set(
        f"det:slack:msg:{{t:acme}}:{alert.alert_id}",
        (
            f'{{"state":"pending","channel":"{posted.channel}","ts":null,'
            f'"started_ms":{now_ms() - 1000},"thread":null}}'
        ),
    )
    await notifier_factory().deliver_batch([alert])
    assert ids_posted(slack_stub) == ["a1-u1"]
    assert slack_stub.requests == 2  # the original post and one history lookup


async def test_a_burst_becomes_one_summary_that_later_entities_join(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    notifier = notifier_factory(slack_burst_min=5)
    await notifier.deliver_batch([make_alert(i, f"u{i}") for i in range(8)])
    [summary] = slack_stub.messages
    assert summary["text"] == "WARNING rule burn fired for 8 user entities in tenant acme"
    await notifier.deliver_batch([make_alert(i, f"u{i}") for i in range(8, 11)])
    assert len(slack_stub.messages) == 1
    assert slack_stub.updates[-1]["text"] == (
        "WARNING rule burn fired for 11 user entities in tenant acme"
    )
    # A repeat for one entity of the burst replies in the summary's thread.
    await notifier.deliver_batch([make_alert(20, "u3")])
    assert slack_stub.messages[-1]["thread_ts"] == summary["ts"]


async def test_few_alerts_of_a_rule_stay_separate_messages(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    notifier = notifier_factory(slack_burst_min=5)
    await notifier.deliver_batch([make_alert(i, f"u{i}") for i in range(3)])
    assert len(slack_stub.in_channel("#llm-spend")) == 3


async def test_lifted_decision_gets_a_resolved_reply_naming_who(
    notifier_factory: NotifierFactory, slack_stub: SlackStub, redis: Redis
) -> None:
    notifier = notifier_factory()
    store = DecisionStore(redis)
    alert = make_alert(1)
    await store.save([decision_for(alert, now_ms() + 600_000)], now_ms())
    await notifier.deliver_batch([alert])
    await notifier.scan()
    assert len(slack_stub.messages) == 1  # still in force: nothing to say
    record = lift_record("acme", Scope.user, "u1", "false positive", "cli:ana", now_ms())
    await store.lift(record)
    await notifier.scan()
    await notifier.scan()
    first, resolved = slack_stub.messages
    assert resolved["thread_ts"] == first["ts"]
    assert resolved["text"] == "resolved: block of user u1 lifted by cli:ana (false positive)"


async def test_expired_decision_gets_a_resolved_reply(
    notifier_factory: NotifierFactory, slack_stub: SlackStub, redis: Redis
) -> None:
    notifier = notifier_factory()
    until = now_ms() + 1500
    alert = make_alert(1, until_ms=until)
    await DecisionStore(redis).save([decision_for(alert, until)], now_ms())
    await notifier.deliver_batch([alert])
    await asyncio.sleep(1.7)
    await notifier.scan()
    assert slack_stub.messages[-1]["text"] == "resolved: block of user u1 expired"
    assert slack_stub.messages[-1]["thread_ts"] == slack_stub.messages[0]["ts"]


async def test_unresolved_critical_is_escalated_once(
    notifier_factory: NotifierFactory, slack_stub: SlackStub, redis: Redis
) -> None:
    notifier = notifier_factory(
        slack_escalation_channel="#spend-escalations", slack_escalation_delay_s=1
    )
    alert = make_alert(1, severity=Severity.critical)
    await DecisionStore(redis).save([decision_for(alert, now_ms() + 600_000)], now_ms())
    await notifier.deliver_batch([alert])
    await notifier.scan()
    assert len(slack_stub.messages) == 1  # not yet due
    await asyncio.sleep(1.1)
    await notifier.scan()
    await notifier.scan()
    [escalated] = slack_stub.in_channel("#spend-escalations")
    first = slack_stub.messages[0]
    link = f"https://slack.com/archives/{first['channel_id']}/p{first['ts'].replace('.', '')}"
    assert escalated["blocks"][0]["text"]["text"] == (
        f":arrow_double_up: *Escalated*: unresolved after 1 min (<{link}|original thread>)"
    )
    [note] = slack_stub.replies(first["ts"])
    assert note["text"].startswith(":arrow_double_up: Escalated to #spend-escalations")


async def test_alert_only_critical_is_not_escalated(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    notifier = notifier_factory(slack_escalation_channel="#esc", slack_escalation_delay_s=1)
    await notifier.deliver_batch([make_alert(1, severity=Severity.critical, action=Action.alert)])
    await asyncio.sleep(1.1)
    await notifier.scan()
    assert len(slack_stub.messages) == 1


async def test_webhook_posts_repeats_as_messages_and_never_reposts(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    notifier = notifier_factory(webhook=True)
    await notifier.deliver_batch([make_alert(1)])
    await notifier.deliver_batch([make_alert(1), make_alert(2)])
    assert len(slack_stub.messages) == 2 and slack_stub.updates == []
    assert slack_stub.messages[1]["blocks"][-1]["elements"][0]["text"].endswith(
        "fired 2 times, latest shown"
    )


def test_webhook_refuses_channel_routing(
    slack_stub: SlackStub, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(
        slack_webhook_url=SecretStr(slack_stub.webhook_url), slack_channels="critical=#x"
    )
    with pytest.raises(Exception, match="DETECTOR_SLACK_CHANNELS=.critical=#x. needs") as info:
        SlackClient(settings)
    assert "needs DETECTOR_SLACK_BOT_TOKEN" in str(info.value)


async def test_tenant_alert_lists_top_spenders_from_the_daily_rollups(
    notifier_factory: NotifierFactory, slack_stub: SlackStub, redis: Redis
) -> None:
    from detector import keys
    from detector.windows.buckets import DAY_S, bucket_start_ms

    alert = make_alert(1, "acme", scope=Scope.tenant)
    day_ms = bucket_start_ms(now_ms() - 1000, DAY_S)
    await redis.zadd(keys.rank_key("acme", "user", day_ms), {"u1": 5_000_000, "u2": 1_500_000})
    await redis.zadd(keys.rank_key("acme", "model", day_ms), {"gpt-4o": 6_500_000})
    await notifier_factory().deliver_batch([alert])
    section = slack_stub.messages[0]["blocks"][2]["text"]["text"]
    assert section == (
        f"*Top contributors by dollars* (UTC day {rfc3339(day_ms)[:10]} so far, from the daily "
        "roll-ups)\n• model `gpt-4o`: $6.5\n• user `u1`: $5\n• user `u2`: $1.5"
    )


HOSTILE = "<!channel> @here <@U1|x> <https://e.example|go> *b* ```\nf\u2028`x`"


async def test_hostile_identifiers_exact_payload(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    alert = make_alert(1, HOSTILE, action=Action.throttle)
    await notifier_factory().deliver_batch([alert])
    [message] = slack_stub.messages
    shown = (
        "`&lt;!channel&gt; @\u200dhere &lt;@\u200dU1|x&gt; &lt;https://e.example|go&gt; "
        "*b* \u02cb\u02cb\u02cb\\u000af\\u2028\u02cbx\u02cb`"
    )
    assert message["blocks"][0]["text"]["text"] == (
        f":warning: *WARNING* rule `burn`: user {shown} in tenant `acme`"
    )
    assert message["blocks"][1]["fields"][1]["text"] == f"*User*\n{shown}"
    lift = message["blocks"][2]["text"]["text"]
    assert lift == "*To lift it*\n" + lift_hint("acme", "user", HOSTILE).replace("&", "&amp;")
    assert "entity_id=%3C%21channel%3E%20%40here%20%3C%40U1%7Cx%3E" in lift
    assert "override lift" not in lift  # not shell-plain: only the percent-encoded API call
    assert message["text"] == (
        "WARNING rule burn: cost_usd over 1h is 31 (&gt; 25) for user " + shown.strip("`")
    )


async def test_first_alert_and_its_repeat_in_one_batch_make_one_thread(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    await notifier_factory().deliver_batch([make_alert(1), make_alert(2, "u2"), make_alert(3)])
    first, second, repeat = slack_stub.messages
    assert repeat["thread_ts"] == first["ts"] and "thread_ts" not in second


async def test_killed_after_posting_before_noting_the_thread_still_threads(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    alert = make_alert(1)
    killed = notifier_factory()
    # What a notifier killed right after its post was recorded leaves behind: no thread yet.
    await killed.state.set_carriers("acme", [alert.alert_id], alert.alert_id)
    await killed.post_once("acme", alert.alert_id, None, "t", [])
    restarted = notifier_factory()
    await restarted.deliver_batch([alert])
    await restarted.deliver_batch([make_alert(2)])
    first, repeat = slack_stub.messages
    assert repeat["thread_ts"] == first["ts"]


async def test_killed_during_a_summary_post_does_not_post_it_twice(
    notifier_factory: NotifierFactory, slack_stub: SlackStub, redis: Redis
) -> None:
    alerts = [make_alert(i, f"u{i}") for i in range(6)]
    slack_stub.post_then_fail.append(500)  # the summary lands; its answer is lost
    slack_stub.fail_next.extend([200, 200, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500])
    killed = notifier_factory(slack_burst_min=5)
    task = asyncio.create_task(killed.deliver_batch(alerts))
    await asyncio.sleep(1.0)  # posted, then stuck retrying the lookup
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    slack_stub.fail_next.clear()
    await notifier_factory(slack_burst_min=5).deliver_batch(alerts)
    [summary] = slack_stub.messages
    assert summary["text"] == "WARNING rule burn fired for 6 user entities in tenant acme"
    assert await redis.exists("det:slack:thread:{t:acme}:burn:user:u5") == 1


async def test_very_long_identifier_is_cut_with_its_length(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    long_id = "k" * 100 + "<!here>" + "z" * 149  # 256 characters, the most an event may carry
    await notifier_factory().deliver_batch([make_alert(1, long_id, action=Action.alert)])
    [message] = slack_stub.messages
    assert message["blocks"][1]["fields"][1]["text"] == ("*User*\n`" + "k" * 79 + "… (256 chars)`")
    assert message["blocks"][0]["text"]["text"] == (
        ":warning: *WARNING* rule `burn`: user `" + "k" * 79 + "… (256 chars)` in tenant `acme`"
    )
    assert "&lt;!here&gt;" in message["text"] and "<" not in message["text"]


async def test_burst_entities_ending_together_get_one_resolved_reply(
    notifier_factory: NotifierFactory, slack_stub: SlackStub, redis: Redis
) -> None:
    notifier = notifier_factory(slack_burst_min=5)
    until = now_ms() + 1500
    alerts = [make_alert(i, f"u{i}", until_ms=until) for i in range(6)]
    await DecisionStore(redis).save([decision_for(a, until) for a in alerts], now_ms())
    await notifier.deliver_batch(alerts)
    await asyncio.sleep(1.7)
    await notifier.scan()
    await notifier.scan()
    summary, resolved = slack_stub.messages
    assert resolved["thread_ts"] == summary["ts"]
    assert resolved["text"] == "resolved for 6 entities"
    lines = resolved["blocks"][1]["text"]["text"].splitlines()
    assert sorted(lines) == [f"• user `u{i}`: block expired" for i in range(6)]


async def test_a_refused_severity_channel_falls_back_to_the_default_once(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    slack_stub.refuse_channels.add("#gone")
    notifier = notifier_factory(slack_channels="critical=#gone")
    alert = make_alert(1, severity=Severity.critical)
    await notifier.deliver_batch([alert])
    await notifier.deliver_batch([alert])  # read again after a restart: nothing new
    [message] = slack_stub.messages
    assert message["channel"] == "#llm-spend"
    assert message["blocks"][-1]["elements"][0]["text"] == (
        "Posted here because #gone refused it: slack answered 200: channel_not_found"
    )
    await notifier.deliver_batch([make_alert(2, severity=Severity.critical)])
    assert slack_stub.messages[-1]["thread_ts"] == message["ts"]


async def test_an_unreadable_decision_end_still_posts(
    notifier_factory: NotifierFactory, slack_stub: SlackStub, redis: Redis
) -> None:
    alert = make_alert(1).model_copy(update={"until": "not-a-time"})
    await notifier_factory().deliver_batch([alert])
    [message] = slack_stub.messages
    assert message["blocks"][1]["fields"][5]["text"] == "*Decision*\n*block* until not-a-time"
    assert await redis.hget("det:slack:thread:{t:acme}:burn:user:u1", "until_ms") == b"0"


async def test_a_partial_thread_record_is_dropped_by_the_timer(
    notifier_factory: NotifierFactory, slack_stub: SlackStub, redis: Redis
) -> None:
    key = "det:slack:thread:{t:acme}:burn:user:u1"
    await redis.hset(key, mapping={"fired": 3, "last_ms": 1})  # what a racing touch leaves
    await redis.zadd("det:slack:open:{t:_global}", {key: 1})
    notifier = notifier_factory()
    await notifier.scan()
    assert await redis.exists(key) == 0
    assert await redis.zcard("det:slack:open:{t:_global}") == 0
    await notifier.deliver_batch([make_alert(1)])
    assert len(slack_stub.in_channel("#llm-spend")) == 1


async def test_a_burst_that_builds_up_says_how_many_came_separately(
    notifier_factory: NotifierFactory, slack_stub: SlackStub
) -> None:
    notifier = notifier_factory(slack_burst_min=5)
    await notifier.deliver_batch([make_alert(i, f"u{i}") for i in range(3)])
    await notifier.deliver_batch([make_alert(i, f"u{i}") for i in range(3, 5)])
    *single, summary = slack_stub.in_channel("#llm-spend")
    assert len(single) == 3
    assert summary["text"] == "WARNING rule burn fired for 2 user entities in tenant acme"
    lines = summary["blocks"][1]["text"]["text"].splitlines()
    assert lines[-1] == "(3 more posted separately just before)"
