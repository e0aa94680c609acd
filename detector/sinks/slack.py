"""Slack output through slack-sdk: an incoming webhook, or a bot token posting to a channel."""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from detector.config import Settings
from detector.errors import ConfigError, SinkError
from detector.schemas import Alert

log = logging.getLogger(__name__)

SEVERITY_ICON = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
}


def escape(text: str) -> str:
    """Neutralise user-supplied text for Slack mrkdwn: no mentions, links or channel pings.

    Slack only treats `<...>` as mentions and links, so escaping &, < and > (as Slack asks)
    disarms `<!channel>` and `<http://...|...>`; a zero-width joiner after @ stops `@channel`
    turning into a mention where link_names is on.

    >>> escape("<!channel> @here & <http://x|y>")
    '&lt;!channel&gt; @\u200dhere &amp; &lt;http://x|y&gt;'
    """
    out = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return out.replace("@", "@\u200d")


def render_text(alert: Alert) -> str:
    """Plain-text summary of an alert (notification preview and fallback)."""
    prefix = "[shadow] " if alert.shadow else ""
    return (
        f"{prefix}{alert.severity.value.upper()} {alert.kind.value} {escape(alert.rule_id)}: "
        f"{escape(alert.message)}"
    )


def render_blocks(alert: Alert) -> list[dict[str, Any]]:
    """Block Kit layout: headline, figures, and what was decided."""
    icon = SEVERITY_ICON.get(alert.severity.value, "")
    limit = f"{alert.threshold:g}" if alert.threshold is not None else "n/a"
    fields = [
        f"*Tenant*\n{escape(alert.tenant_id)}",
        f"*{escape(alert.scope.value)}*\n{escape(alert.entity_id)}",
        f"*{escape(alert.metric)} over {escape(alert.window)}*\n{alert.observed:g}",
        f"*Threshold*\n{limit}",
    ]
    decided = f"*Action*: {alert.action.value}"
    if alert.until:
        decided += f" until {alert.until}"
    if alert.shadow:
        decided += " (shadow mode: not enforced)"
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {render_text(alert)}"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"{decided} | event time {alert.event_time}"},
            ],
        },
    ]


class SlackSink:
    """Posts alerts to Slack; raises SinkError with `retry_after_s` when Slack asks to wait."""

    def __init__(self, settings: Settings) -> None:
        self._webhook: AsyncWebhookClient | None = None
        self._web: AsyncWebClient | None = None
        self._channel = settings.slack_channel
        if settings.slack_webhook_url is not None:
            url = settings.slack_webhook_url.get_secret_value()
            if settings.slack_base_url:
                # A proxy or a test server stands in for hooks.slack.com; keep the hook's path.
                path = url.split("://", 1)[-1].partition("/")[2]
                url = settings.slack_base_url.rstrip("/") + "/" + path
            self._webhook = AsyncWebhookClient(url, timeout=10)
        elif settings.slack_bot_token is not None:
            if not settings.slack_channel:
                raise ConfigError(
                    "DETECTOR_SLACK_CHANNEL is required when DETECTOR_SLACK_BOT_TOKEN is set"
                )
            base_url = settings.slack_base_url or AsyncWebClient.BASE_URL
            if not base_url.endswith("/"):
                base_url += "/"
            self._web = AsyncWebClient(
                token=settings.slack_bot_token.get_secret_value(), base_url=base_url, timeout=10
            )
        else:
            raise ConfigError("no Slack setting: set DETECTOR_SLACK_WEBHOOK_URL or _BOT_TOKEN")

    async def send_alert(self, alert: Alert) -> None:
        text, blocks = render_text(alert), render_blocks(alert)
        if self._webhook is not None:
            try:
                resp = await self._webhook.send(text=text, blocks=blocks)
            except (TimeoutError, OSError) as exc:
                raise SinkError(f"slack webhook unreachable: {exc}") from exc
            if resp.status_code != 200:
                raise _sink_error(resp.status_code, resp.headers, resp.body)
            return
        assert self._web is not None
        try:
            await self._web.chat_postMessage(channel=self._channel or "", text=text, blocks=blocks)
        except SlackApiError as exc:
            raise _sink_error(exc.response.status_code, exc.response.headers, str(exc)) from exc
        except (TimeoutError, OSError) as exc:
            raise SinkError(f"slack API unreachable: {exc}") from exc

    async def close(self) -> None:
        return None


class LogSink:
    """Used when no Slack setting is given: alerts are logged (and stay on the alerts topic)."""

    async def send_alert(self, alert: Alert) -> None:
        log.warning("ALERT %s", render_text(alert))

    async def close(self) -> None:
        return None


class RetryableSinkError(SinkError):
    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _sink_error(status: int, headers: Any, body: str) -> SinkError:
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
    if status == 429 or status >= 500:
        return RetryableSinkError(message, retry_after)
    return SinkError(message)


def make_sink(settings: Settings) -> SlackSink | LogSink:
    if settings.slack_webhook_url is None and settings.slack_bot_token is None:
        return LogSink()
    return SlackSink(settings)
