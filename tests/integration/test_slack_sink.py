"""The Slack transport through slack-sdk to a local Slack stand-in: both client kinds, the
public `post_message` that digests use, error classes and the log sink."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from detector.config import Settings
from detector.errors import ConfigError, SinkError
from detector.schemas import Severity
from detector.sinks.slack import RetryableSinkError, SlackClient
from detector.slack_stub import SlackStub

from .conftest import settings_env

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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DETECTOR_SLACK_WEBHOOK_URL": "http://x/h", "DETECTOR_SLACK_CHANNELS": "critical=#x"},
            "error: DETECTOR_SLACK_CHANNELS='critical=#x' needs DETECTOR_SLACK_BOT_TOKEN: an "
            "incoming webhook posts only to its own channel",
        ),
        (
            {"DETECTOR_SLACK_BOT_TOKEN": "xoxb-1", "DETECTOR_SLACK_CHANNELS": "urgent=#x"},
            "error: bad setting: DETECTOR_SLACK_CHANNELS='urgent=#x': unknown severity 'urgent' "
            "(expected info, warning or critical)",
        ),
        (
            {"DETECTOR_SLACK_BOT_TOKEN": "xoxb-1"},
            "error: DETECTOR_SLACK_CHANNEL is required when DETECTOR_SLACK_BOT_TOKEN is set",
        ),
        (
            {"DETECTOR_SLACK_WEBHOOK_URL": "http://x/h", "DETECTOR_SLACK_BASE_URL": "localhost"},
            "error: bad setting: DETECTOR_SLACK_BASE_URL='localhost': expected an http:// or "
            "https:// URL",
        ),
    ],
)
async def test_bad_slack_settings_stop_the_worker_at_start(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    python: str,
    env: dict[str, str],
    message: str,
) -> None:
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "detector", "worker",
        env=settings_env(settings_factory(), **env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 1
    assert stderr.decode().strip().splitlines()[-1] == message
