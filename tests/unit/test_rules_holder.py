from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from detector.errors import RulesError
from detector.rules.holder import RulesHolder
from detector.rules.schema import RuleSet, ThresholdRule

GOOD = """\
rules:
  - id: first
    scope: tenant
    metric: cost_usd
    window: 1h
    threshold: 10
"""
BETTER = """\
rules:
  - id: first
    scope: tenant
    metric: cost_usd
    window: 1h
    threshold: 20
  - id: second
    scope: user
    metric: requests
    window: 5m
    threshold: 100
"""
BAD = """\
rules:
  - id: first
    scope: tenant
    metric: cost_usd
    window: 1h
    threshold: -1
"""


def write(path: Path, text: str, mtime_ns: int) -> None:
    """Write `text` and pin the modification time, so changes never hide in one clock tick."""
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    write(path, GOOD, 1_000_000_000_000_000_000)
    return path


def test_loads_at_start(rules_path: Path) -> None:
    holder = RulesHolder(rules_path)
    assert [r.id for r in holder().rules] == ["first"]
    assert holder.path == rules_path


def test_bad_file_at_start_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    write(path, BAD, 1)
    with pytest.raises(RulesError) as exc:
        RulesHolder(path)
    assert str(exc.value) == (
        "rules.yaml: rules[0] (id=first).threshold: Input should be greater than or equal to 0, "
        "got -1"
    )


def test_reload_takes_a_good_file(rules_path: Path) -> None:
    holder = RulesHolder(rules_path)
    write(rules_path, BETTER, 2_000_000_000_000_000_000)
    assert holder.reload() is True
    assert [r.id for r in holder().rules] == ["first", "second"]
    assert threshold_of(holder()) == 20


def test_reload_keeps_old_rules_on_a_bad_file(
    rules_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = RulesHolder(rules_path)
    before = holder()
    write(rules_path, BAD, 2_000_000_000_000_000_000)
    with caplog.at_level(logging.ERROR, logger="detector.rules.holder"):
        assert holder.reload() is False
    assert holder() is before
    assert caplog.messages == [
        "rules reload refused, keeping the previous rules:\n"
        "rules.yaml: rules[0] (id=first).threshold: Input should be greater than or equal to 0, "
        "got -1"
    ]


def test_reload_keeps_old_rules_when_the_file_vanishes(rules_path: Path) -> None:
    holder = RulesHolder(rules_path)
    before = holder()
    rules_path.unlink()
    assert holder.reload_if_changed() is False
    assert holder() is before


def test_reload_if_changed_only_when_mtime_moves(rules_path: Path) -> None:
    holder = RulesHolder(rules_path)
    before = holder()
    assert holder.reload_if_changed() is False
    assert holder() is before
    write(rules_path, BETTER, 2_000_000_000_000_000_000)
    assert holder.reload_if_changed() is True
    assert len(holder().rules) == 2
    assert holder.reload_if_changed() is False


def test_bad_edit_then_fix(rules_path: Path) -> None:
    holder = RulesHolder(rules_path)
    write(rules_path, BAD, 2_000_000_000_000_000_000)
    assert holder.reload_if_changed() is False
    assert threshold_of(holder()) == 10
    # The same bad file is not retried on every tick.
    assert holder.reload_if_changed() is False
    write(rules_path, BETTER, 3_000_000_000_000_000_000)
    assert holder.reload_if_changed() is True
    assert threshold_of(holder()) == 20


def test_same_mtime_hides_an_edit(rules_path: Path) -> None:
    # The holder watches the modification time only; an edit that keeps it is not seen.
    holder = RulesHolder(rules_path)
    write(rules_path, BETTER, 1_000_000_000_000_000_000)
    assert holder.reload_if_changed() is False
    assert len(holder().rules) == 1


def test_reload_keeps_old_rules_on_a_non_utf8_file(rules_path: Path) -> None:
    holder = RulesHolder(rules_path)
    before = holder()
    rules_path.write_bytes(GOOD.replace("first", "caf\xe9").encode("latin-1"))
    assert holder.reload() is False
    assert holder() is before


def threshold_of(rules: RuleSet) -> float:
    rule = rules.rules[0]
    assert isinstance(rule, ThresholdRule)
    return rule.threshold
