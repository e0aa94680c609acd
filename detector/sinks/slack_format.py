"""Pure Slack rendering: Block Kit for alerts, repeats, burst summaries, resolutions, escalations.

Every identifier in a message comes from users' traffic, so all of it goes through `ident`
(inline code, entities escaped, invisible and layout characters shown as escapes, long ids cut)
or `escape` (free text). Nothing here does I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from detector.schemas import Action, Alert, AlertKind, Severity

Block = dict[str, Any]

SEVERITY_ICON = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
}
IDENT_MAX_CHARS = 80  # longer identifiers are cut, with their length said
SUMMARY_MAX_LINES = 10
CONTRIBUTORS_MAX = 5
FIELD_MAX_CHARS = 1900  # Slack's limit for a field is 2000
SECTION_MAX_CHARS = 2900  # and 3000 for a section's text
BACKTICK_STANDIN = "\u02cb"  # modifier letter grave: looks like ` but cannot open code
ZWJ = "\u200d"
# Ids that a shell takes as they are; only those are shown inside a CLI command.
_SHELL_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}$")
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def escape(text: str) -> str:
    """Neutralise user-supplied text for Slack mrkdwn: no mentions, links or channel pings.

    Slack only treats `<...>` as mentions and links, so escaping &, < and > (as Slack asks)
    disarms `<!channel>` and `<http://...|...>`; a zero-width joiner after @ stops `@channel`
    turning into a mention where link_names is on.

    >>> escape("<!channel> @here & <http://x|y>")
    '&lt;!channel&gt; @\u200dhere &amp; &lt;http://x|y&gt;'
    """
    out = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return out.replace("@", "@" + ZWJ)


def visible(text: str) -> str:
    """Show control, format and line-breaking characters as escapes; neutralise backticks.

    >>> visible("a\\nb\u202ec`d")
    'a\\\\u000ab\\\\u202ec\u02cbd'
    """
    out = []
    for ch in text:
        if ch == "`":
            out.append(BACKTICK_STANDIN)
        elif unicodedata.category(ch) in _INVISIBLE:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def clip(text: str, max_chars: int = IDENT_MAX_CHARS) -> str:
    """Cut text longer than max_chars, saying how long it was.

    >>> clip("x" * 100, 10)
    'xxxxxxxxx… (100 chars)'
    """
    if len(text) <= max_chars:
        return text
    return f"{text[: max_chars - 1]}… ({len(text)} chars)"


def ident(text: str, max_chars: int = IDENT_MAX_CHARS) -> str:
    """An identifier as inline code that cannot mention, link, format or break the layout.

    >>> ident("<!here> *x*")
    '`&lt;!here&gt; *x*`'
    """
    # Cut what will be shown (escapes included), then escape, so no entity is cut in half.
    return f"`{escape(clip(visible(text), max_chars))}`"


def free_text(text: str, max_chars: int = SECTION_MAX_CHARS) -> str:
    """Free text (an alert's message) made safe for mrkdwn and cut to fit."""
    return escape(clip(visible(text), max_chars))


def number(value: float) -> str:
    """A figure for people: plain decimals, at most six places.

    >>> number(20.04881234), number(50.0), number(0.0)
    ('20.048812', '50', '0')
    """
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def enforced(alert: Alert) -> bool:
    """Whether the alert carries a decision that the lookup API enforces."""
    return alert.action in (Action.throttle, Action.block) and not alert.shadow


def lift_hint(tenant: str, scope: str, entity: str) -> str:
    """How to lift a decision: the CLI command (when the ids are shell-plain) and the API call.

    The API call percent-encodes every id, so it is exact and safe to paste for any id.

    >>> hint = lift_hint("acme", "user", "alice@corp")
    >>> "override lift" in hint, "entity_id=alice%40corp&" in hint
    (False, True)
    >>> lift_hint("acme", "user", "u1").splitlines()[0]
    '```detector override lift --tenant acme --scope user --id u1'
    """
    query = (
        f"tenant_id={quote(tenant, safe='')}&scope={quote(scope, safe='')}"
        f"&entity_id={quote(entity, safe='')}&reason=reviewed"
    )
    api = (
        'curl -X DELETE -H "Authorization: Bearer $ADMIN_TOKEN" '
        f'"$DETECTOR_API/v1/admin/overrides?{query}"'
    )
    if _SHELL_PLAIN.match(tenant) and _SHELL_PLAIN.match(entity) and scope != "tenant":
        cli = f"detector override lift --tenant {tenant} --scope {scope} --id {entity}\n"
    elif _SHELL_PLAIN.match(tenant) and scope == "tenant":
        cli = f"detector override lift --tenant {tenant}\n"
    else:
        cli = ""  # the id has characters a shell would read; the API call below is exact
    return f"```{cli}{api}```"


def _figures(alert: Alert) -> tuple[str, str]:
    """(what was observed, what it was compared with) as mrkdwn."""
    metric, window = ident(alert.metric, 40), ident(alert.window, 20)
    observed = f"*{number(alert.observed)}* {metric} over {window}"
    if alert.expected is not None and alert.kind is AlertKind.anomaly:
        compared = f"expected {number(alert.expected)}"
        if alert.band is not None:
            compared += f" (band {number(alert.band[0])} to {number(alert.band[1])})"
        score = getattr(alert, "score", None)
        if isinstance(score, (int, float)):
            compared += f", score {number(float(score))}"
        return observed, compared
    if alert.threshold is not None:
        return observed, f"threshold {number(alert.threshold)}"
    if alert.expected is not None:
        return observed, f"expected {number(alert.expected)}"
    return observed, "no threshold"


def decision_text(alert: Alert) -> str:
    """The decision taken and until when, in words."""
    if alert.shadow and alert.action in (Action.throttle, Action.block):
        return f"shadow: would {alert.action.value} until {alert.until or 'n/a'} (not enforced)"
    if enforced(alert):
        return f"*{alert.action.value}* until {alert.until or 'n/a'}"
    if alert.shadow:
        return "alert only (shadow rule)"
    return "alert only, nothing enforced"


def contributor_line(item: dict[str, str | float]) -> str:
    """One contributor as `scope id: $cost (share)`.

    >>> contributor_line({"scope": "user", "id": "u1", "cost_usd": 12.5, "share": 0.4})
    '• user `u1`: $12.5 (40% of the spend)'
    """
    scope = str(item.get("scope", ""))
    name = str(item.get("id", item.get("entity_id", "?")))
    line = f"• {escape(visible(clip(scope, 20)))} {ident(name)}"
    cost = item.get("cost_usd")
    if isinstance(cost, (int, float)):
        line += f": ${number(float(cost))}"
    expected = item.get("expected_usd")
    if isinstance(expected, (int, float)):
        line += f", usually ${number(float(expected))}"
    share = item.get("share")
    if isinstance(share, (int, float)):
        line += f" ({share:.0%} of the spend)"
    return line


@dataclass(frozen=True, slots=True)
class Extras:
    """What the notifier adds to an alert at delivery: looked-up contributors and their basis."""

    contributors: Sequence[dict[str, str | float]] = ()
    contributors_basis: str = ""  # e.g. "today (UTC), from the daily roll-ups"


def headline(alert: Alert) -> str:
    """First line: severity, what fired, for whom."""
    icon = SEVERITY_ICON.get(alert.severity.value, "")
    what = "anomaly" if alert.kind is AlertKind.anomaly else alert.kind.value.replace("_", " ")
    shadow = " [shadow]" if alert.shadow else ""
    who = f"{alert.scope.value} {ident(alert.entity_id)}"
    if alert.scope.value not in ("tenant", "global"):
        who += f" in tenant {ident(alert.tenant_id)}"
    rule = ident(alert.rule_id, 64)
    return f"{icon} *{alert.severity.value.upper()}*{shadow} {what} {rule}: {who}"


def render_text(alert: Alert) -> str:
    """Plain-text summary of an alert: the notification preview and the fallback text."""
    prefix = "[shadow] " if alert.shadow else ""
    return (
        f"{prefix}{alert.severity.value.upper()} {alert.kind.value} "
        f"{free_text(alert.rule_id, 64)}: {free_text(alert.message)}"
    )


def render_alert(alert: Alert, extras: Extras | None = None, fired: int = 1) -> list[Block]:
    """Block Kit for one alert: what fired, for whom, figures, window, decision, how to lift."""
    extras = extras or Extras()
    observed, compared = _figures(alert)
    fields = [
        f"*Tenant*\n{ident(alert.tenant_id)}",
        f"*{alert.scope.value.replace('_', ' ').capitalize()}*\n{ident(alert.entity_id)}",
        f"*Observed*\n{observed}",
        f"*Compared with*\n{compared}",
        f"*Window*\n{ident(alert.window, 20)} ending {alert.event_time}",
        f"*Decision*\n{decision_text(alert)}",
    ]
    blocks: list[Block] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline(alert)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    contributors = list(alert.contributors) or list(extras.contributors)
    if contributors:
        basis = "" if alert.contributors else f" {escape(extras.contributors_basis)}"
        lines = [contributor_line(c) for c in contributors[:CONTRIBUTORS_MAX]]
        text = f"*Top contributors by dollars*{basis}\n" + "\n".join(lines)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    if enforced(alert):
        hint = lift_hint(alert.tenant_id, alert.scope.value, alert.entity_id)
        text = f"*To lift it*\n{escape(hint)}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    context = f"alert {ident(alert.alert_id, 40)} | raised {alert.created_at}"
    if fired > 1:
        context += f" | fired {fired} times, latest shown"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return blocks


DIGEST_LINE_MAX_CHARS = 500
DIGEST_TEXT_MAX_CHARS = 3900  # the notification text; Slack allows far more, people read less


def render_digest(alert: Alert) -> tuple[str, list[Block]]:
    r"""A digest's own layout: its lines kept as lines, each made safe on its own (ids in it come
    from traffic), in as many sections as they need; and the same lines as the fallback text.

    >>> from detector.schemas import Alert
    >>> text, blocks = render_digest(Alert.model_validate({
    ...     "alert_id": "digest:daily:0", "kind": "digest", "rule_id": "daily-digest",
    ...     "severity": "info", "tenant_id": "all", "scope": "global", "entity_id": "all",
    ...     "window": "day", "metric": "cost_usd", "observed": 1.0, "action": "alert",
    ...     "event_time": "2026-01-01T00:00:00Z", "created_at": "2026-01-01T00:05:00Z",
    ...     "message": "*Daily digest*\nTop users: <!channel> $1.00"}))
    >>> text
    '*Daily digest*\nTop users: &lt;!channel&gt; $1.00'
    >>> blocks[0]["text"]["text"] == text
    True
    """
    lines = [
        escape(clip(visible(line), DIGEST_LINE_MAX_CHARS)) for line in alert.message.splitlines()
    ]
    sections: list[str] = []
    current = ""
    for line in lines:
        if current and len(current) + 1 + len(line) > SECTION_MAX_CHARS:
            sections.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        sections.append(current)
    blocks: list[Block] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": section}}
        for section in sections[:48]  # Slack takes 50 blocks in a message
    ]
    context = f"{ident(alert.alert_id, 60)} | sent {alert.created_at}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return clip("\n".join(lines), DIGEST_TEXT_MAX_CHARS), blocks


def render_repeat(alert: Alert, fired: int) -> tuple[str, list[Block]]:
    """Thread reply when a (rule, entity) fires again while its first message is current."""
    observed, compared = _figures(alert)
    text = (
        f":repeat: Fired again ({fired} times so far): {observed}, {compared}; "
        f"{decision_text(alert)}"
    )
    plain = f"fired again: {free_text(alert.message)}"
    return plain, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]


def render_summary(
    alerts: Sequence[Alert], total: int, separately: int = 0
) -> tuple[str, list[Block]]:
    """One message for a burst: one rule firing for many entities of a tenant.

    `separately` counts the entities of the burst already posted one by one before it.
    """
    first = alerts[0]
    icon = SEVERITY_ICON.get(first.severity.value, "")
    worst = max(alerts, key=lambda a: list(Severity).index(a.severity))
    scope = first.scope.value
    head = (
        f"{icon} *{worst.severity.value.upper()}* {first.kind.value} {ident(first.rule_id, 64)} "
        f"fired for *{total}* {scope} entities in tenant {ident(first.tenant_id)}"
    )
    ranked = sorted(alerts, key=lambda a: -a.observed)
    lines = [
        f"• {ident(a.entity_id)}: {number(a.observed)} {ident(a.metric, 40)} over "
        f"{ident(a.window, 20)}; {decision_text(a)}"
        for a in ranked[:SUMMARY_MAX_LINES]
    ]
    if total > len(lines):
        lines.append(f"…and {total - len(lines)} more")
    if separately:
        lines.append(f"({separately} more posted separately just before)")
    blocks: list[Block] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": head}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _fit("\n".join(lines))}},
    ]
    if any(enforced(a) for a in alerts):
        hint = lift_hint(first.tenant_id, scope, "ID").replace("--id ID", "--id <ID>")
        hint = hint.replace("entity_id=ID", "entity_id=<ID>")
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*To lift one*\n{escape(hint)}"},
            }
        )
    plain = (
        f"{worst.severity.value.upper()} {first.kind.value} {free_text(first.rule_id, 64)} "
        f"fired for {total} {scope} entities in tenant {free_text(first.tenant_id, 128)}"
    )
    return plain, blocks


def render_resolved(
    scope: str, entity: str, action: str, how: str, at: str
) -> tuple[str, list[Block]]:
    """Thread reply when a decision ends: `how` is 'expired' or 'lifted by X (reason)'."""
    text = f":white_check_mark: Resolved: {action} of {scope} {ident(entity)} {how} at {at}"
    plain = f"resolved: {action} of {scope} {free_text(entity, 128)} {how}"
    return plain, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]


def render_resolved_many(
    ended: Sequence[tuple[str, str, str, str]], at: str
) -> tuple[str, list[Block]]:
    """One reply for several entities of a burst whose decisions ended: (scope, id, action, how)."""
    lines = [
        f"• {scope} {ident(entity)}: {action} {how}"
        for scope, entity, action, how in ended[:SUMMARY_MAX_LINES]
    ]
    if len(ended) > len(lines):
        lines.append(f"…and {len(ended) - len(lines)} more")
    head = f":white_check_mark: Resolved for {len(ended)} entities at {at}"
    blocks: list[Block] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": head}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _fit("\n".join(lines))}},
    ]
    return f"resolved for {len(ended)} entities", blocks


def render_escalation(
    alert: Alert, extras: Extras | None, delay_s: int, link: str | None
) -> tuple[str, list[Block]]:
    """The message posted to the escalation channel for a high-severity alert still open."""
    minutes = max(delay_s // 60, 1)
    head = f":arrow_double_up: *Escalated*: unresolved after {minutes} min"
    if link:
        head += f" (<{link}|original thread>)"
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": head}}]
    blocks += render_alert(alert, extras)
    return f"escalated: {render_text(alert)}", blocks


def _fit(text: str) -> str:
    return text if len(text) <= SECTION_MAX_CHARS else text[: SECTION_MAX_CHARS - 1] + "…"
