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
from detector.schemas import Alert, AlertKind
from detector.sinks.slack_format import (
    BACKTICK_STANDIN,
    Extras,
    escape,
    ident,
    lift_hint,
    render_alert,
    render_resolved,
    render_summary,
    render_text,
)

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


# --- ident: identifiers from traffic -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("u1", "`u1`"),
        ("<!channel>", "`&lt;!channel&gt;`"),
        ("@here", f"`@{ZWJ}here`"),
        ("```rm -rf```", f"`{BACKTICK_STANDIN * 3}rm -rf{BACKTICK_STANDIN * 3}`"),
        ("a\nb", "`a\\u000ab`"),
        ("line\u2028sep", "`line\\u2028sep`"),
        ("evil\u202etxt.exe", "`evil\\u202etxt.exe`"),
        ("*bold* _it_ ~s~", "`*bold* _it_ ~s~`"),
        ("x" * 81, "`" + "x" * 79 + "… (81 chars)`"),
    ],
)
def test_ident(raw: str, shown: str) -> None:
    assert ident(raw) == shown


@given(st.text(min_size=1, max_size=300))
def test_ident_is_one_code_span_without_markup(text: str) -> None:
    out = ident(text)
    assert out.startswith("`") and out.endswith("`") and out.count("`") == 2
    assert "<" not in out and ">" not in out and "\n" not in out
    assert re.search(f"@(?!{ZWJ})", out) is None
    shown = out[1:-1].replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    assert len(shown.replace(ZWJ, "")) <= 80 + len(" (9999 chars)")


# --- render_text / render_alert ----------------------------------------------------------------


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


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def test_render_alert_layout_of_an_enforced_block() -> None:
    alert = alert_for("u1", action="block", severity="critical", **{"for": "15m"})
    lift = (
        "```detector override lift --tenant acme --scope user --id u1\n"
        'curl -X DELETE -H "Authorization: Bearer $ADMIN_TOKEN" "$DETECTOR_API/v1/admin/'
        'overrides?tenant_id=acme&amp;scope=user&amp;entity_id=u1&amp;reason=reviewed"```'
    )
    assert render_alert(alert) == [
        {
            "type": "section",
            "text": _mrkdwn(
                ":rotating_light: *CRITICAL* rule `user-spend`: user `u1` in tenant `acme`"
            ),
        },
        {
            "type": "section",
            "fields": [
                _mrkdwn("*Tenant*\n`acme`"),
                _mrkdwn("*User*\n`u1`"),
                _mrkdwn("*Observed*\n*30* `cost_usd` over `1h`"),
                _mrkdwn("*Compared with*\nthreshold 25"),
                _mrkdwn("*Window*\n`1h` ending 2023-11-14T22:13:19.000Z"),
                _mrkdwn("*Decision*\n*block* until 2023-11-14T22:28:20.000Z"),
            ],
        },
        {"type": "section", "text": _mrkdwn(f"*To lift it*\n{lift}")},
        {
            "type": "context",
            "elements": [_mrkdwn(f"alert `{alert.alert_id}` | raised 2023-11-14T22:13:20.000Z")],
        },
    ]


def test_alert_only_and_shadow_have_no_lift_section() -> None:
    for alert in (alert_for("u1"), alert_for("u1", action="block", shadow=True)):
        texts = json.dumps(render_alert(alert))
        assert "To lift it" not in texts
    shadow = render_alert(alert_for("u1", action="throttle", shadow=True, **{"for": "1h"}))
    assert shadow[1]["fields"][5]["text"] == (
        "*Decision*\nshadow: would throttle until 2023-11-14T23:13:20.000Z (not enforced)"
    )
    assert render_alert(alert_for("u1"))[1]["fields"][5]["text"] == (
        "*Decision*\nalert only, nothing enforced"
    )


def test_anomaly_shows_expected_band_score_and_its_own_contributors() -> None:
    base = alert_for("acme", scope="tenant")
    data = base.model_dump() | {
        "kind": AlertKind.anomaly,
        "threshold": None,
        "expected": 4.25,
        "band": (2.0, 6.5),
        "contributors": [
            {"scope": "user", "id": "<!here>", "cost_usd": 20.5, "expected_usd": 1.0, "share": 0.8},
            {"scope": "model", "id": "gpt-4o", "cost_usd": 3.0},
        ],
    }
    anomaly = type(base).model_validate(data)
    blocks = render_alert(anomaly, Extras([{"scope": "user", "id": "ignored", "cost_usd": 1}]))
    assert blocks[0]["text"]["text"] == ":warning: *WARNING* anomaly `user-spend`: tenant `acme`"
    assert blocks[1]["fields"][3]["text"] == "*Compared with*\nexpected 4.25 (band 2 to 6.5)"
    assert blocks[2]["text"]["text"] == (
        "*Top contributors by dollars*\n"
        "• user `&lt;!here&gt;`: $20.5, usually $1 (80% of the spend)\n"
        "• model `gpt-4o`: $3"
    )


def test_looked_up_contributors_say_their_basis() -> None:
    alert = alert_for("acme", scope="tenant")
    extras = Extras([{"scope": "user", "id": "u9", "cost_usd": 7.5}], "(UTC day 2023-11-14)")
    blocks = render_alert(alert, extras)
    assert blocks[2]["text"]["text"] == (
        "*Top contributors by dollars* (UTC day 2023-11-14)\n• user `u9`: $7.5"
    )


@pytest.mark.parametrize(
    ("tenant", "scope", "entity", "cli"),
    [
        ("acme", "user", "u1", "detector override lift --tenant acme --scope user --id u1"),
        ("acme", "tenant", "acme", "detector override lift --tenant acme"),
        ("acme", "user", "bob@corp.com", None),
        ("acme", "api_key", "k'; rm -rf / #", None),
        ("acme", "user", "`id`", None),
    ],
)
def test_lift_hint_only_shows_shell_plain_ids_and_encodes_the_api_call(
    tenant: str, scope: str, entity: str, cli: str | None
) -> None:
    hint = lift_hint(tenant, scope, entity)
    assert hint.startswith("```") and hint.endswith("```") and hint.count("```") == 2
    lines = hint.strip("`").splitlines()
    if cli is not None:
        assert lines[0] == cli
    api = lines[-1]
    assert api.startswith("curl -X DELETE")
    query = api.split("?", 1)[1].rstrip('"')
    assert re.fullmatch(r"[A-Za-z0-9_=&%.~-]+", query), query
    assert len(lines) == (1 if cli is None else 2)


def test_summary_lists_the_top_entities_and_counts_the_rest() -> None:
    alerts = [alert_for(f"u{i}", action="block") for i in range(12)]
    alerts = [a.model_copy(update={"observed": float(i)}) for i, a in enumerate(alerts)]
    text, blocks = render_summary(alerts, 15)
    assert text == "WARNING rule user-spend fired for 15 user entities in tenant acme"
    lines = blocks[1]["text"]["text"].splitlines()
    assert len(lines) == 11 and lines[0].startswith("• `u11`: 11 `cost_usd`")
    assert lines[-1] == "…and 5 more"
    assert "--id &lt;ID&gt;" in blocks[2]["text"]["text"]


def test_resolved_reply() -> None:
    text, blocks = render_resolved("user", "<!channel>", "block", "expired", "2023-11-14T23:00:00Z")
    assert blocks[0]["text"]["text"] == (
        ":white_check_mark: Resolved: block of user `&lt;!channel&gt;` expired at "
        "2023-11-14T23:00:00Z"
    )
    assert text == "resolved: block of user &lt;!channel&gt; expired"


@pytest.mark.parametrize("entity", HOSTILE)
@pytest.mark.parametrize("action", ["alert", "throttle", "block"])
@pytest.mark.parametrize("shadow", [False, True])
def test_hostile_entity_never_reaches_slack_raw(entity: str, action: str, shadow: bool) -> None:
    alert = alert_for(entity, tenant="acme@corp", action=action, shadow=shadow)
    assert entity in alert.message  # the alert itself keeps the raw id
    rendered = json.dumps([render_text(alert), render_alert(alert)], ensure_ascii=False)
    assert "<" not in rendered
    assert re.search(r"&(?!amp;|lt;|gt;)", rendered) is None
    assert re.search(f"@(?!{ZWJ})", rendered) is None
    assert escape(entity) in render_text(alert)
    assert f"*User*\\n{ident(entity)}" in rendered


@pytest.mark.parametrize("hostile", [*HOSTILE, "a\u2028b", "```\n*x*", "x" * 256])
def test_every_free_text_field_is_escaped(hostile: str) -> None:
    alert = alert_for("u1", action="block").model_copy(
        update={
            "tenant_id": hostile,
            "entity_id": hostile,
            "rule_id": hostile,
            "metric": hostile,
            "window": hostile,
            "message": hostile,
        }
    )
    rendered = json.dumps([render_text(alert), render_alert(alert)], ensure_ascii=False)
    assert "<" not in rendered
    assert re.search(r"&(?!amp;|lt;|gt;)", rendered) is None
    assert re.search(f"@(?!{ZWJ})", rendered) is None
    assert "\u2028" not in rendered
    for block in render_alert(alert):
        for part in [block.get("text", {})] + block.get("fields", []) + block.get("elements", []):
            text = part.get("text", "")
            # code fences only around the lift hint: a hostile id cannot open or close one
            assert text.count("```") in (0, 2)
            assert len(text) <= 2000


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=300))
def test_any_entity_is_neutralised(entity: str) -> None:
    alert = alert_for(entity, action="block")
    rendered = json.dumps([render_text(alert), render_alert(alert)], ensure_ascii=False)
    assert "<" not in rendered
    assert ">" not in rendered.replace("&gt;", "")
    for block in render_alert(alert):
        text = json.dumps(block, ensure_ascii=False)
        assert text.count("```") in (0, 2)


def test_digest_keeps_its_lines_and_disarms_ids_from_traffic() -> None:
    from detector.sinks.slack_format import SECTION_MAX_CHARS, render_digest

    hostile = ["<!here>", "@channel", "<https://evil.example|click>", "a`b", "x\u202ey"]
    lines = ["*Daily spend digest*"] + [f"user {h} ${i}.00" for i in range(400) for h in hostile]
    alert = Alert.model_validate(
        {
            "alert_id": "digest:daily:0",
            "kind": "digest",
            "rule_id": "daily-digest",
            "severity": "info",
            "tenant_id": "all",
            "scope": "global",
            "entity_id": "all",
            "window": "day",
            "metric": "cost_usd",
            "observed": 1.0,
            "action": "alert",
            "event_time": "2026-01-01T00:00:00Z",
            "created_at": "2026-01-01T00:05:00Z",
            "message": "\n".join(lines),
        }
    )
    text, blocks = render_digest(alert)
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert len(sections) > 1 and all(len(s) <= SECTION_MAX_CHARS for s in sections)
    assert sections[0].startswith("*Daily spend digest*\nuser ")  # lines stay lines
    shown = "\n".join(sections)
    for dangerous in ("<!here>", "<https://", "@channel", "`", "\u202e"):
        assert dangerous not in shown and dangerous not in text
    assert len(blocks) <= 50
