from __future__ import annotations

from pathlib import Path

import pytest

from detector.errors import ConfigError
from detector.reports.plans import load_plans, parse_plans

BAD_PLANS = Path(__file__).resolve().parents[1] / "data" / "bad_plans"
EXPECTED = {
    "bad_per.yaml": "bad_per.yaml: plans.team.per: Input should be 'tenant' or 'user', got 'seat'",
    "bad_tenant.yaml": (
        "bad_tenant.yaml: tenants: 'acme corp' is not a tenant id "
        "(1-128 of A-Z a-z 0-9 . _ : @ / + = -)"
    ),
    "negative_revenue.yaml": (
        "negative_revenue.yaml: plans.team.revenue_usd: Input should be greater than or equal "
        "to 0, got -5"
    ),
    "no_plans.yaml": "no_plans.yaml: plans: is required",
    "unknown_default.yaml": (
        "unknown_default.yaml: default_plan: unknown plan 'gold'; plans are team"
    ),
    "unknown_key.yaml": (
        "unknown_key.yaml: plans.team.revenue_usd: is required\n"
        "unknown_key.yaml: plans.team.revenue: unknown key"
    ),
    "unknown_plan.yaml": "unknown_plan.yaml: tenants.acme: unknown plan 'gold'; plans are team",
    "zero_share.yaml": "zero_share.yaml: unprofitable_share: Input should be greater than 0, got 0",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_plans_file(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_plans(BAD_PLANS / name)
    assert str(exc.value) == EXPECTED[name]


def test_every_bad_plans_file_has_an_expected_message() -> None:
    assert {p.name for p in BAD_PLANS.glob("*.yaml")} - {"not_yaml.yaml"} == set(EXPECTED)


def test_not_yaml_and_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"^not_yaml.yaml: not valid YAML: "):
        load_plans(BAD_PLANS / "not_yaml.yaml")
    with pytest.raises(ConfigError) as exc:
        load_plans(BAD_PLANS / "absent.yaml")
    assert str(exc.value) == "absent.yaml: cannot read the plans file: No such file or directory"


def test_plan_of_a_tenant() -> None:
    plans = parse_plans(
        "default_plan: free\nplans:\n  free: {revenue_usd: 0, per: tenant}\n"
        "  team: {revenue_usd: 19.99, per: user}\ntenants: {acme: team}\n",
        "plans.yaml",
    )
    found = plans.plan_of("acme")
    assert found is not None and found[0] == "team" and found[1].revenue_usd_micros == 19_990_000
    assert plans.plan_of("other") == ("free", plans.plans["free"])
    assert plans.unprofitable_share == 1.0
