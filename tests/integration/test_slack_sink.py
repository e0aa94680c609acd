"""Alert delivery through slack-sdk to a local Slack stand-in: both client kinds, retries."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import SecretStr

from detector.config import Settings
from detector.decisions.policy import decide
from detector.rules.engine import RuleHit
from detector.rules.loader import parse_rules
from detector.schemas import Alert, Scope
from detector.sinks.slack import SlackSink
from detector.slack_stub import SlackStub
from detector.worker import deliver

RULES = parse_rules(
    "rules: [{id: burn, scope: user, metric: cost_usd, window: 1h, threshold: 5, action: block}]",
    "t.yaml",
)


def make_alert(entity: str) -> Alert:
    hit = RuleHit(RULES.rules[0], "acme", Scope.user, entity, 7.5, {})
    [outcome] = decide(RULES, [hit], 1_700_000_000_000, 1_700_000_000_000)
    return outcome.alert


async def test_bot_token_posts_to_channel_through_base_url(
    slack_stub: SlackStub, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(
        slack_bot_token=SecretStr("xoxb-test"),
        slack_channel="#llm-spend",
        slack_base_url=slack_stub.api_url,
    )
    sink = SlackSink(settings)
    await deliver(sink, make_alert("u1").model_dump_json().encode())
    [message] = slack_stub.messages
    assert message["channel"] == "#llm-spend"
    assert message["_auth"] == "Bearer xoxb-test"
    assert "burn" in str(message["text"]) and "user u1" in str(message["text"])


async def test_webhook_retries_429_and_500_then_delivers_once(
    slack_stub: SlackStub, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(slack_webhook_url=SecretStr(slack_stub.webhook_url))
    slack_stub.fail_next.extend([429, 500])
    slack_stub.retry_after_s = 1
    await deliver(SlackSink(settings), make_alert("u2").model_dump_json().encode())
    assert slack_stub.requests == 3
    assert len(slack_stub.messages) == 1


async def test_hostile_identifiers_cannot_mention_or_link(
    slack_stub: SlackStub, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(slack_webhook_url=SecretStr(slack_stub.webhook_url))
    hostile = "<!channel> <https://evil.example|click> @here"
    await deliver(SlackSink(settings), make_alert(hostile).model_dump_json().encode())
    [message] = slack_stub.messages
    rendered = str(message)
    assert "<!channel>" not in rendered and "<https://evil" not in rendered
    assert "@here" not in rendered
    assert "&lt;!channel&gt;" in str(message["text"])
