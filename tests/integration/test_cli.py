"""The `detector` command as users run it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from detector.config import Settings

from .conftest import settings_env

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  (our own command, fixed arguments)
        [sys.executable, "-m", "detector", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_rules_validate_accepts_the_repository_rules() -> None:
    done = run(["rules", "validate", "rules.yaml"])
    assert done.returncode == 0, done.stderr
    assert "rules.yaml: 10 rules, 2 budgets, OK" in done.stdout


def test_rules_validate_prints_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text(
        "rules:\n  - {id: a, scope: tenant, metric: cost, window: 1h, threshold: 1}\n"
        "  - {id: b, scope: tenant, metric: cost_usd, window: 1h, threshold: 1, for: 0s}\n"
    )
    done = run(["rules", "validate", str(bad)])
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: mine.yaml: rules[0] (id=a).metric: must be one of")
    assert lines[0].endswith("got 'cost'")
    assert lines[1] == "mine.yaml: rules[1] (id=b).for: must be > 0s, got '0s'"


def test_bad_setting_names_the_variable() -> None:
    done = run(["spend", "--tenant", "acme"], env={"DETECTOR_KAFKA_BOOTSTRAP": "nohost"})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: bad setting: DETECTOR_KAFKA_BOOTSTRAP='nohost': expected host:port[,host:port...]"
    )


def test_spend_reads_a_window_as_json(settings_factory: Callable[..., Settings]) -> None:
    env = settings_env(settings_factory())
    done = run(["spend", "--tenant", "acme", "--window", "today", "--json"], env=env)
    assert done.returncode == 0, done.stderr
    body = orjson.loads(done.stdout)
    assert body["scope"] == "tenant" and body["window"] == "today"
    assert body["metrics"]["cost_usd"] == 0 and body["metrics"]["requests"] == 0
    done = run(["spend", "--tenant", "acme", "--window", "2h"], env=env)
    assert done.returncode == 1
    assert "--window must be one of" in done.stderr


def test_worker_refuses_a_bad_anomaly_section(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("anomaly:\n  scopes: [tenant]\n  sensitivity: 2\n")
    done = run(["worker"], env={"DETECTOR_RULES": str(bad), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: rules.yaml: anomaly.sensitivity: Input should be less than or equal to 1, got 2"
    )
