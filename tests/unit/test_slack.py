from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.decisions.policy import decide
from detector.rules.engine import RuleHit
from detector.rules.schema import RuleSet, ThresholdRule
from detector.schemas import Alert
from detector.sinks.slack import escape, render_blocks, render_text

NOW_MS = 1_700_000_000_000
ZWJ = "\u200d"
HOSTILE = [
    "<!channel>",
    "<!here>",
    "@channel",
    "<https://evil|click>",
    "a & b",
    "<@U123> <#C456|general> <!subteam^S1>",
    "&lt;!channel&gt;",  # already-escaped text must not come back to life
]


def make_rule(**fields: Any) -> ThresholdRule:
    data: dict[str, Any] = {
        "id": "user-spend",
        "scope": "user",
        "metric": "cost_usd",
        "window": "1h",
        "threshold": 25,
    }
    data.update(fields)
    return ThresholdRule.model_validate(data)


def alert_for(entity: str, tenant: str = "acme", **rule_fields: Any) -> Alert:
    rule = make_rule(**rule_fields)
    hit = RuleHit(rule, tenant, rule.scope, entity, 30.0, {"cost_usd": 30.0})
    [outcome] = decide(RuleSet(rules=[rule]), [hit], NOW_MS - 1000, NOW_MS)
    return outcome.alert


def unescape(text: str) -> str:
    return (
        text.replace("@" + ZWJ, "@").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )


# --- escape ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("<!channel>", "&lt;!channel&gt;"),
        ("<!here>", "&lt;!here&gt;"),
        ("@channel", f"@{ZWJ}channel"),
        ("@here and @everyone", f"@{ZWJ}here and @{ZWJ}everyone"),
        ("<https://evil|click>", "&lt;https://evil|click&gt;"),
        ("a & b", "a &amp; b"),
        ("&lt;", "&amp;lt;"),
        ("plain-id_42", "plain-id_42"),
        ("", ""),
    ],
)
def test_escape(text: str, escaped: str) -> None:
    assert escape(text) == escaped


@given(st.text())
def test_escape_leaves_no_markup(text: str) -> None:
    out = escape(text)
    assert "<" not in out
    assert ">" not in out
    assert re.search(r"&(?!amp;|lt;|gt;)", out) is None
    assert re.search(f"@(?!{ZWJ})", out) is None


@given(st.text())
def test_escape_is_reversible(text: str) -> None:
    assert unescape(escape(text)) == text


# --- render_text / render_blocks ---------------------------------------------------------------


def test_render_text_of_a_throttle_alert() -> None:
    alert = alert_for("u1", action="throttle", **{"for": "30m"})
    assert render_text(alert) == (
        "WARNING rule user-spend: cost_usd over 1h is 30 (&gt; 25) for user u1; "
        "throttle until 2023-11-14T22:43:20.000Z"
    )


def test_render_text_of_a_shadow_alert() -> None:
    alert = alert_for("u1", action="block", shadow=True, severity="critical")
    assert render_text(alert) == (
        "[shadow] CRITICAL rule user-spend: cost_usd over 1h is 30 (&gt; 25) for user u1 "
        "(shadow: would have applied block)"
    )


def test_render_blocks_layout() -> None:
    alert = alert_for("u1", action="block", severity="critical", **{"for": "15m"})
    assert render_blocks(alert) == [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f":rotating_light: {render_text(alert)}"},
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": "*Tenant*\nacme"},
                {"type": "mrkdwn", "text": "*user*\nu1"},
                {"type": "mrkdwn", "text": "*cost_usd over 1h*\n30"},
                {"type": "mrkdwn", "text": "*Threshold*\n25"},
            ],
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": "*Action*: block until 2023-11-14T22:28:20.000Z"
                    " | event time 2023-11-14T22:13:19.000Z",
                }
            ],
        },
    ]


def test_render_blocks_shadow_and_alert_only_context() -> None:
    shadow = alert_for("u1", action="throttle", shadow=True, **{"for": "1h"})
    context = render_blocks(shadow)[2]["elements"][0]["text"]
    assert context == (
        "*Action*: throttle until 2023-11-14T23:13:20.000Z (shadow mode: not enforced)"
        " | event time 2023-11-14T22:13:19.000Z"
    )
    alert_only = alert_for("u1")
    context = render_blocks(alert_only)[2]["elements"][0]["text"]
    assert context == "*Action*: alert | event time 2023-11-14T22:13:19.000Z"
    assert render_blocks(alert_only)[0]["text"]["text"].startswith(":warning: WARNING rule")


def test_threshold_missing_renders_as_not_applicable() -> None:
    alert = alert_for("u1").model_copy(update={"threshold": None})
    assert render_blocks(alert)[1]["fields"][3]["text"] == "*Threshold*\nn/a"


@pytest.mark.parametrize("entity", HOSTILE)
@pytest.mark.parametrize("action", ["alert", "throttle", "block"])
@pytest.mark.parametrize("shadow", [False, True])
def test_hostile_entity_never_reaches_slack_raw(entity: str, action: str, shadow: bool) -> None:
    alert = alert_for(entity, tenant="acme@corp", action=action, shadow=shadow)
    assert entity in alert.message  # the alert itself keeps the raw id
    rendered = json.dumps([render_text(alert), render_blocks(alert)], ensure_ascii=False)
    assert "<" not in rendered
    assert re.search(r"&(?!amp;|lt;|gt;)", rendered) is None
    assert re.search(f"@(?!{ZWJ})", rendered) is None
    assert escape(entity) in render_text(alert)
    assert f"*user*\\n{escape(entity)}" in rendered


@pytest.mark.parametrize("hostile", HOSTILE)
def test_every_free_text_field_is_escaped(hostile: str) -> None:
    # Tenants are held to a strict alphabet at decode time; the sink escapes them regardless.
    alert = alert_for("u1").model_copy(
        update={
            "tenant_id": hostile,
            "entity_id": hostile,
            "rule_id": hostile,
            "metric": hostile,
            "window": hostile,
            "message": hostile,
        }
    )
    rendered = json.dumps([render_text(alert), render_blocks(alert)], ensure_ascii=False)
    assert "<" not in rendered
    assert re.search(r"&(?!amp;|lt;|gt;)", rendered) is None
    assert re.search(f"@(?!{ZWJ})", rendered) is None


@given(st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=60))
def test_any_printable_entity_is_neutralised(entity: str) -> None:
    alert = alert_for(entity, action="block")
    rendered = json.dumps([render_text(alert), render_blocks(alert)], ensure_ascii=False)
    assert "<" not in rendered
    assert ">" not in rendered.replace("&gt;", "")
