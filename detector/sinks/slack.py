"""Slack transport through slack-sdk: an incoming webhook, or a bot token posting to channels.

`SlackClient.post_message` is the one public way to put a message (text + blocks) in a channel;
the alert notifier (`sinks/notifier.py`) and the digests use it. Errors come out as
`RetryableSinkError` (429 with its Retry-After, 5xx, network) or `SinkError` (Slack refused the
message itself: bad channel, bad token), so callers decide how to retry.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from detector.config import Settings, parse_channel_routes
from detector.errors import ConfigError, SinkError
from detector.schemas import Alert, AlertKind, Severity
from detector.sinks.slack_format import (
    SEVERITY_ICON,
    Block,
    escape,
    render_alert,
    render_digest,
    render_text,
)

log = logging.getLogger(__name__)

__all__ = [
    "SEVERITY_ICON",
    "LogSink",
    "Posted",
    "RetryableSinkError",
    "SlackClient",
    "SlackSink",
    "escape",
    "make_sink",
    "render_blocks",
    "render_text",
]

METADATA_EVENT = "llm_spend_detector_message"
REQUEST_TIMEOUT_S = 10
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")


class RetryableSinkError(SinkError):
    """Slack could not take the message now; `ambiguous` when it may have posted it anyway."""

    def __init__(self, message: str, retry_after_s: float | None, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.ambiguous = ambiguous


@dataclass(frozen=True, slots=True)
class Posted:
    """Where a message landed; `ts` is None for a webhook, which does not say."""

    channel: str
    ts: str | None


def render_blocks(alert: Alert) -> list[Block]:
    return render_alert(alert)


class SlackClient:
    """Posts, updates and finds messages; bot mode routes by severity and threads."""

    def __init__(self, settings: Settings) -> None:
        self._webhook: AsyncWebhookClient | None = None
        self._web: AsyncWebClient | None = None
        self.default_channel = settings.slack_channel or ""
        self.routes = parse_channel_routes(settings.slack_channels)
        self.escalation_channel = settings.slack_escalation_channel
        if settings.slack_webhook_url is not None and settings.slack_bot_token is not None:
            raise ConfigError(
                "DETECTOR_SLACK_WEBHOOK_URL and DETECTOR_SLACK_BOT_TOKEN are both set: set one"
            )
        if settings.slack_webhook_url is not None:
            for name, value in (
                ("DETECTOR_SLACK_CHANNELS", settings.slack_channels),
                ("DETECTOR_SLACK_ESCALATION_CHANNEL", settings.slack_escalation_channel),
            ):
                if value:
                    raise ConfigError(
                        f"{name}={value!r} needs DETECTOR_SLACK_BOT_TOKEN: an incoming webhook "
                        "posts only to its own channel"
                    )
            url = settings.slack_webhook_url.get_secret_value()
            if settings.slack_base_url:
                # A proxy or a test server stands in for hooks.slack.com; keep the hook's path.
                path = url.split("://", 1)[-1].partition("/")[2]
                url = settings.slack_base_url.rstrip("/") + "/" + path
            self._webhook = AsyncWebhookClient(url, timeout=REQUEST_TIMEOUT_S)
        elif settings.slack_bot_token is not None:
            if not settings.slack_channel:
                raise ConfigError(
                    "DETECTOR_SLACK_CHANNEL is required when DETECTOR_SLACK_BOT_TOKEN is set"
                )
            base_url = settings.slack_base_url or AsyncWebClient.BASE_URL
            if not base_url.endswith("/"):
                base_url += "/"
            self._web = AsyncWebClient(
                token=settings.slack_bot_token.get_secret_value(),
                base_url=base_url,
                timeout=REQUEST_TIMEOUT_S,
                # Retries are ours: before retrying a post whose fate is unknown, the notifier
                # asks Slack whether it landed.
                retry_handlers=[],
            )
        else:
            raise ConfigError("no Slack setting: set DETECTOR_SLACK_WEBHOOK_URL or _BOT_TOKEN")

    @property
    def threads(self) -> bool:
        """Whether messages can be updated, threaded and looked up (bot token, not webhook)."""
        return self._web is not None

    def channel_for(self, severity: Severity) -> str:
        return self.routes.get(severity, self.default_channel)

    async def post_message(
        self,
        channel: str | None,
        text: str,
        blocks: list[Block],
        *,
        thread_ts: str | None = None,
        message_id: str | None = None,
    ) -> Posted:
        """Post text + blocks to `channel` (None: the default; a webhook ignores it).

        `message_id` goes into the message's metadata, so `find_message` can tell later
        whether a post whose answer was lost did land.
        """
        channel = channel or self.default_channel
        if self._webhook is not None:
            try:
                resp = await self._webhook.send(text=text, blocks=blocks)
            except (TimeoutError, OSError, ClientError) as exc:
                raise RetryableSinkError(f"slack webhook unreachable: {exc!r}", None, True) from exc
            if resp.status_code != 200:
                raise _http_error(resp.status_code, resp.headers, str(resp.body))
            return Posted(channel, None)
        assert self._web is not None
        metadata = None
        if message_id is not None:
            metadata = {"event_type": METADATA_EVENT, "event_payload": {"id": message_id}}
        data = await self._call(
            self._web.chat_postMessage,
            channel=channel,
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            metadata=metadata,
            unfurl_links=False,
            unfurl_media=False,
        )
        return Posted(str(data.get("channel") or channel), str(data["ts"]))

    async def update_message(self, channel: str, ts: str, text: str, blocks: list[Block]) -> None:
        """Replace a message's content (bot mode only; a no-op for a webhook)."""
        if self._web is None:
            return
        await self._call(self._web.chat_update, channel=channel, ts=ts, text=text, blocks=blocks)

    async def find_message(
        self, channel: str, message_id: str, oldest_s: float, thread_ts: str | None = None
    ) -> str | None:
        """The ts of the message posted with `message_id` since `oldest_s`, if Slack has it.

        Needs the channels:history scope (and channels:read to find a channel given by name);
        returns None when it cannot look (webhook, unknown channel, missing scope).
        """
        if self._web is None:
            return None
        if not _CHANNEL_ID.match(channel):
            found = await self._channel_id(channel)
            if found is None:
                return None
            channel = found
        args: dict[str, Any] = {
            "channel": channel,
            "oldest": f"{max(oldest_s, 0):.6f}",
            "include_all_metadata": True,
            "limit": 200,
        }
        try:
            if thread_ts is None:
                data = await self._call(self._web.conversations_history, **args)
            else:
                data = await self._call(self._web.conversations_replies, ts=thread_ts, **args)
        except RetryableSinkError:
            raise
        except SinkError as exc:
            log.warning("cannot look up earlier Slack posts in %s: %s", channel, exc)
            return None
        for message in data.get("messages") or []:
            meta = message.get("metadata") or {}
            payload = meta.get("event_payload") or {}
            if meta.get("event_type") == METADATA_EVENT and payload.get("id") == message_id:
                return str(message["ts"])
        return None

    async def _channel_id(self, name: str) -> str | None:
        """A channel's id from its name, through conversations.list (rarely needed)."""
        assert self._web is not None
        bare, cursor = name.lstrip("#"), None
        for _ in range(20):  # at most 20 pages of 1,000 channels
            try:
                data = await self._call(
                    self._web.conversations_list,
                    types="public_channel,private_channel",
                    exclude_archived=True,
                    limit=1000,
                    cursor=cursor,
                )
            except RetryableSinkError:
                raise
            except SinkError as exc:
                log.warning("cannot resolve Slack channel %r: %s", name, exc)
                return None
            for channel in data.get("channels") or []:
                if channel.get("name") == bare:
                    return str(channel["id"])
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        return None

    async def _call(self, method: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = await method(**kwargs)
        except SlackApiError as exc:
            body = exc.response.data
            said = str(body.get("error")) if isinstance(body, dict) else str(body)
            raise _http_error(exc.response.status_code, exc.response.headers, said) from exc
        except (TimeoutError, OSError, ClientError, SlackClientError, ValueError) as exc:
            # The request may have reached Slack before the failure: its fate is unknown.
            raise RetryableSinkError(f"slack API unreachable: {exc!r}", None, True) from exc
        data: dict[str, Any] = dict(resp.data) if isinstance(resp.data, dict) else {}
        return data

    async def close(self) -> None:
        return None


class SlackSink:
    """One plain post per alert, routed by severity (kept for simple uses and the digests)."""

    def __init__(self, settings: Settings) -> None:
        self.client = SlackClient(settings)

    async def send_alert(self, alert: Alert) -> None:
        channel = self.client.channel_for(alert.severity)
        if alert.kind is AlertKind.digest:
            text, blocks = render_digest(alert)
            await self.client.post_message(channel, text, blocks)
            return
        await self.client.post_message(channel, render_text(alert), render_alert(alert))

    async def close(self) -> None:
        await self.client.close()


class LogSink:
    """Used when no Slack setting is given: alerts are logged (and stay on the alerts topic)."""

    async def send_alert(self, alert: Alert) -> None:
        log.warning("ALERT %s", render_text(alert))

    async def close(self) -> None:
        return None


def _http_error(status: int, headers: Any, body: str) -> SinkError:
    retry_after = None
    if headers:
        for name, value in dict(headers).items():
            if name.lower() == "retry-after":
                value = value[0] if isinstance(value, list) else value
                try:
                    retry_after = float(value)
                except ValueError:
                    retry_after = None
    message = f"slack answered {status}: {body[:200]}"
    if status == 429:
        return RetryableSinkError(message, retry_after)
    if status >= 500:  # Slack may have acted on the request before failing
        return RetryableSinkError(message, retry_after, ambiguous=True)
    return SinkError(message)


def slack_configured(settings: Settings) -> bool:
    return settings.slack_webhook_url is not None or settings.slack_bot_token is not None


def make_sink(settings: Settings) -> SlackSink | LogSink:
    return SlackSink(settings) if slack_configured(settings) else LogSink()
