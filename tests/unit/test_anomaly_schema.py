"""The `anomaly:` section of rules.yaml: defaults, and one bad file per error, message exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.anomaly.detectors import UNIVARIATE
from detector.errors import RulesError
from detector.rules.loader import load_rules, parse_rules
from detector.schemas import Action, Scope

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad_anomaly"

EXPECTED: dict[str, str] = {
    "sensitivity.yaml": (
        "sensitivity.yaml: anomaly.sensitivity: Input should be less than or equal to 1, got 1.5"
    ),
    "scope.yaml": (
        "scope.yaml: anomaly.scopes: each scope must be one of tenant, user, feature, model, "
        "api_key, got ['tenant', 'session']"
    ),
    "detector.yaml": (
        "detector.yaml: anomaly.detector: must be default or one of "
        f"{', '.join(UNIVARIATE)}, got 'prophet'"
    ),
    "interval.yaml": (
        "interval.yaml: anomaly.interval: must divide a day into whole intervals of at least "
        "10s, got '7m'"
    ),
    "unknown_key.yaml": "unknown_key.yaml: anomaly.min_spend: unknown key",
    "outlier_factor.yaml": (
        "outlier_factor.yaml: anomaly.outliers.factor: Input should be greater than 1, got 1"
    ),
    "allow_action.yaml": (
        "allow_action.yaml: anomaly.action: must be alert, throttle or block (allow is for "
        "overrides), got 'allow'"
    ),
    "zero_warmup.yaml": (
        "zero_warmup.yaml: anomaly.warmup: Input should be greater than or equal to 1, got 0"
    ),
    "duplicate_id.yaml": (
        "duplicate_id.yaml: anomaly.id: duplicate rule id 'spend-anomaly' (first used by rules[0])"
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_anomaly_section(name: str) -> None:
    with pytest.raises(RulesError) as exc:
        load_rules(BAD / name)
    assert str(exc.value) == EXPECTED[name]


def test_every_bad_anomaly_file_has_an_expected_message() -> None:
    assert {p.name for p in BAD.glob("*.yaml")} == set(EXPECTED)


def test_defaults_and_the_repository_example() -> None:
    section = parse_rules("anomaly: {}", "t.yaml").anomaly
    assert section is not None
    assert section.scopes == [Scope.tenant, Scope.user, Scope.feature, Scope.model]
    assert (section.interval_s, section.window, section.action) == (60, "1m", Action.alert)
    assert section.outliers is not None and section.outliers.scopes == [Scope.user, Scope.api_key]
    assert parse_rules("rules: []", "t.yaml").anomaly is None

    example = load_rules(REPO / "rules.yaml").anomaly
    assert example is not None and example.min_spend_usd == 0.5 and example.warmup == 60


def test_grace_must_be_shorter_than_the_interval() -> None:
    with pytest.raises(RulesError) as exc:
        parse_rules("anomaly: {interval: 30s, grace: 30s}", "t.yaml")
    assert str(exc.value) == (
        "t.yaml: anomaly: grace: must be shorter than the interval (30s), got 30s"
    )
