from __future__ import annotations

from pathlib import Path

import pytest

from detector.errors import RulesError
from detector.rules.loader import load_rules, parse_rules
from detector.rules.schema import ThresholdRule
from detector.schemas import Action, Scope

REPO = Path(__file__).resolve().parents[2]
BAD_RULES = REPO / "tests" / "data" / "bad_rules"
WINDOW_CHOICES = "1m, 5m, 1h, 1d, 7d, 30d, today, week, month"
METRIC_CHOICES = (
    "cost_usd, input_cost_usd, output_cost_usd, input_tokens, output_tokens, "
    "cached_input_tokens, requests, errors, unpriced_requests, billed_cost_usd, table_cost_usd, "
    "cost_per_request_usd, output_input_ratio, error_rate"
)
NOT_YAML = """\
not_yaml.yaml: not valid YAML: while parsing a flow sequence
  in "<unicode string>", line 3, column 12:
        scope: [tenant
               ^
expected ',' or ']', but got ':'
  in "<unicode string>", line 4, column 11:
        metric: cost_usd
              ^"""

EXPECTED: dict[str, str] = {
    "bad_pair.yaml": (
        "bad_pair.yaml: rules[0] (id=user-model).scope: a pair must be tenant+<scope> (other "
        "pairs: use the scope and a `where` filter), got 'user+model'"
    ),
    "bad_filter.yaml": (
        "bad_filter.yaml: rules[0] (id=chat).where.colour: Input should be 'user', 'feature', "
        "'model', 'api_key', 'session', 'provider' or 'status', got 'colour'"
    ),
    "growth_history_not_kept.yaml": (
        "growth_history_not_kept.yaml: rules[0] (id=hour-vs-yesterday): vs: the 1h window is "
        "not kept long enough to compare with 1d earlier, got '1d'"
    ),
    "unknown_kind.yaml": (
        "unknown_kind.yaml: rules[0] (id=fancy): kind: must be threshold, growth or abuse"
    ),
    "budget_bad_fraction.yaml": (
        "budget_bad_fraction.yaml: budgets[0] (id=monthly).alert_at: each fraction must be in "
        "(0, 1], got [0.5, 1.5]"
    ),
    "budget_zero_amount.yaml": (
        "budget_zero_amount.yaml: budgets[0] (id=monthly).amount_usd: Input should be greater "
        "than 0, got 0"
    ),
    "budget_bad_period.yaml": (
        "budget_bad_period.yaml: budgets[0] (id=quarterly).period: Input should be 'day', "
        "'week' or 'month', got 'quarter'"
    ),
    "zero_window.yaml": (
        f"zero_window.yaml: rules[0] (id=zero-window).window: must be one of {WINDOW_CHOICES}, "
        "got '0s'"
    ),
    "unknown_key.yaml": "unknown_key.yaml: rules[0] (id=typo-key).treshold: unknown key",
    "unknown_metric.yaml": (
        f"unknown_metric.yaml: rules[0] (id=bad-metric).metric: must be one of {METRIC_CHOICES}, "
        "got 'dollars'"
    ),
    "unknown_scope.yaml": (
        "unknown_scope.yaml: rules[0] (id=bad-scope).scope: Input should be 'global', 'tenant', "
        "'user', 'feature', 'model', 'api_key' or 'session', got 'organisation'"
    ),
    "negative_threshold.yaml": (
        "negative_threshold.yaml: rules[0] (id=negative).threshold: "
        "Input should be greater than or equal to 0, got -5"
    ),
    "zero_for.yaml": "zero_for.yaml: rules[0] (id=zero-for).for: must be > 0s, got '0s'",
    # The rule-set level check has no location, which leaves an empty field between colons.
    "duplicate_id.yaml": (
        "duplicate_id.yaml: rules[1].id: duplicate rule id 'same' (first used by rules[0])"
    ),
    "allow_action.yaml": (
        "allow_action.yaml: rules[0] (id=allow-rule).action: must be alert, throttle or block "
        "(allow is for overrides), got 'allow'"
    ),
    "global_block.yaml": (
        "global_block.yaml: rules[0] (id=global-block): action: a global rule can only alert "
        "(there is no entity to block), got 'block'"
    ),
    "missing_id.yaml": "missing_id.yaml: rules[0].id: is required",
    "not_yaml.yaml": NOT_YAML,
    "bad_rule_id.yaml": (
        "bad_rule_id.yaml: rules[0] (id=Tenant Spend!).id: String should match pattern "
        "'^[a-z0-9][a-z0-9_.-]{0,63}$', got 'Tenant Spend!'"
    ),
    "not_a_mapping.yaml": "not_a_mapping.yaml: expected a mapping with a 'rules' list at the top",
    # The duration parser's message already ends with the value, and the loader adds it again.
    "bad_duration.yaml": (
        "bad_duration.yaml: rules[0] (id=fractional-for).for: must be a duration such as "
        "30s, 15m, 1h or 1d, got '1.5h'"
    ),
    "bad_op.yaml": "bad_op.yaml: rules[0] (id=bad-op).op: Input should be '>' or '>=', got '=='",
    "two_problems.yaml": (
        f"two_problems.yaml: rules[0] (id=first).window: must be one of {WINDOW_CHOICES}, "
        "got '2h'\n"
        "two_problems.yaml: rules[1] (id=second).for: must be > 0s, got 0"
    ),
}


@pytest.fixture
def bad_rules() -> Path:
    return BAD_RULES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_rules_file(bad_rules: Path, name: str) -> None:
    with pytest.raises(RulesError) as exc:
        load_rules(bad_rules / name)
    assert str(exc.value) == EXPECTED[name]


def test_every_bad_rules_file_has_an_expected_message(bad_rules: Path) -> None:
    on_disk = {p.name for p in bad_rules.glob("*.yaml")}
    assert on_disk - {"not_utf8.yaml"} == set(EXPECTED)


def test_required_bad_rules_files_exist(bad_rules: Path) -> None:
    required = {
        "zero_window.yaml",
        "unknown_key.yaml",
        "unknown_metric.yaml",
        "unknown_scope.yaml",
        "negative_threshold.yaml",
        "zero_for.yaml",
        "duplicate_id.yaml",
        "allow_action.yaml",
        "global_block.yaml",
        "missing_id.yaml",
        "not_yaml.yaml",
        "bad_rule_id.yaml",
    }
    assert required <= {p.name for p in bad_rules.glob("*.yaml")}


def test_not_utf8_file_is_a_rules_error(bad_rules: Path) -> None:
    with pytest.raises(RulesError) as exc:
        load_rules(bad_rules / "not_utf8.yaml")
    assert str(exc.value).startswith("not_utf8.yaml: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as exc:
        load_rules(tmp_path / "absent.yaml")
    assert str(exc.value) == "absent.yaml: cannot read: No such file or directory"


def test_a_directory_is_not_readable(tmp_path: Path) -> None:
    folder = tmp_path / "rules.yaml"
    folder.mkdir()
    with pytest.raises(RulesError) as exc:
        load_rules(folder)
    assert str(exc.value) == "rules.yaml: cannot read: Is a directory"


def test_repository_rules_file_loads() -> None:
    rules = load_rules(REPO / "rules.yaml")
    by_id = {rule.id: rule for rule in rules.rules}
    assert list(by_id) == [
        "tenant-spend-burst",
        "user-hourly-spend",
        "session-runaway",
        "new-key-burst",
        "shared-key",
        "api-key-daily-spend",
        "tenant-error-rate",
        "tenant-day-over-day",
        "chat-on-frontier-models",
        "feature-hourly-spend-trial",
    ]
    assert [b.id for b in rules.budgets] == ["tenant-monthly-budget", "api-key-daily-budget"]
    assert rules.budgets[0].amount_for("acme") == 5000
    burst = by_id["tenant-spend-burst"]
    assert isinstance(burst, ThresholdRule)
    assert (burst.scope, burst.window, burst.threshold, burst.action) == (
        Scope.tenant,
        "5m",
        20,
        Action.block,
    )
    assert (burst.for_s, burst.cooldown_s) == (900, 600)
    assert by_id["user-hourly-spend"].retry_after_s == 60
    assert by_id["feature-hourly-spend-trial"].shadow is True
    assert rules.allowed(Scope.tenant, "internal-evals")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "rules: []\n", "version: 1\n"])
def test_empty_rule_sets_load(text: str) -> None:
    rules = parse_rules(text, "t.yaml")
    assert rules.rules == []
    assert rules.allow_list == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: 5", "t.yaml: rules: Input should be a valid list, got 5"),
        ("version: 2", "t.yaml: version: Input should be 1, got 2"),
        ("colour: red", "t.yaml: colour: unknown key"),
        ("just text", "t.yaml: expected a mapping with a 'rules' list at the top"),
        (
            "rules: [5]",
            "t.yaml: rules[0]: Input should be a valid dictionary or instance of ThresholdRule, "
            "got 5",
        ),
        (
            "rules: [{id: r, scope: tenant, metric: cost_usd, window: 1h}]",
            "t.yaml: rules[0] (id=r).threshold: is required",
        ),
        (
            "rules: [{id: 7, scope: tenant, metric: cost_usd, window: 1h, threshold: 1}]",
            "t.yaml: rules[0].id: Input should be a valid string, got 7",
        ),
    ],
)
def test_parse_rules_messages(text: str, message: str) -> None:
    with pytest.raises(RulesError) as exc:
        parse_rules(text, "t.yaml")
    assert str(exc.value) == message


def test_parse_rules_keeps_the_yaml_error_as_cause() -> None:
    with pytest.raises(RulesError) as exc:
        parse_rules("a: [", "t.yaml")
    assert exc.value.__cause__ is not None
    assert str(exc.value).startswith("t.yaml: not valid YAML: ")
