"""The Slack transport through slack-sdk to a local Slack stand-in: both client kinds, the
public `post_message` that digests use, error classes and the log sink."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import SecretStr

from detector.config import Settings
from detector.errors import ConfigError, SinkError
from detector.schemas import Severity
from detector.sinks.slack import RetryableSinkError, SlackClient
from detector.slack_stub import SlackStub

BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Weekly digest*"}}]


async def test_bot_token_posts_blocks_and_text_to_a_channel(
    slack_stub: SlackStub, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(
        slack_bot_token=SecretStr("xoxb-test"),
        slack_channel="#llm-spend",
        slack_base_url=slack_stub.api_url,
    )
    client = SlackClient(settings)
    posted = await client.post_message("#finops", "weekly digest", BLOCKS)
    [message] = slack_stub.messages
    assert message["channel"] == "#finops" and message["_auth"] == "Bearer xoxb-test"
    assert message["text"] == "weekly digest" and message["blocks"] == BLOCKS
    assert (posted.channel, posted.ts) == (SlackStub.channel_id("#finops"), message["ts"])
    await client.post_message(None, "default channel", BLOCKS)
    assert slack_stub.messages[1]["channel"] == "#llm-spend"


async def test_webhook_posts_and_says_no_ts(
    slack_stub: SlackStub, settings_factory: Callable[..., Settings]
) -> None:
    client = SlackClient(settings_factory(slack_webhook_url=SecretStr(slack_stub.webhook_url)))
    posted = await client.post_message(None, "digest", BLOCKS)
    assert posted.ts is None and not client.threads
    assert slack_stub.messages == [{"text": "digest", "blocks": BLOCKS}]


@pytest.mark.parametrize("webhook", [False, True])
async def test_errors_say_whether_to_retry_and_how_long_to_wait(
    slack_stub: SlackStub, settings_factory: Callable[..., Settings], webhook: bool
) -> None:
    if webhook:
        settings = settings_factory(slack_webhook_url=SecretStr(slack_stub.webhook_url))
    else:
        settings = settings_factory(
            slack_bot_token=SecretStr("xoxb-test"),
            slack_channel="#c",
            slack_base_url=slack_stub.api_url,
        )
    client = SlackClient(settings)
    slack_stub.retry_after_s = 7
    slack_stub.fail_next.extend([429, 500, 404])
    with pytest.raises(RetryableSinkError) as limited:
        await client.post_message(None, "x", BLOCKS)
    assert limited.value.retry_after_s == 7 and not limited.value.ambiguous
    with pytest.raises(RetryableSinkError) as failed:
        await client.post_message(None, "x", BLOCKS)
    assert failed.value.retry_after_s is None and failed.value.ambiguous
    with pytest.raises(SinkError) as refused:
        await client.post_message(None, "x", BLOCKS)
    assert not isinstance(refused.value, RetryableSinkError)
    assert "404" in str(refused.value)
    assert slack_stub.messages == []


def test_severity_routes_fall_back_to_the_default_channel(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        slack_bot_token=SecretStr("xoxb-test"),
        slack_channel="#spend",
        slack_channels="critical=#oncall",
    )
    client = SlackClient(settings)
    assert client.channel_for(Severity.critical) == "#oncall"
    assert client.channel_for(Severity.info) == "#spend"


def test_bot_token_without_channel_is_refused(settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="DETECTOR_SLACK_CHANNEL is required"):
        SlackClient(settings_factory(slack_bot_token=SecretStr("xoxb-test")))
