from __future__ import annotations

from typing import Any

import orjson
import pytest

from detector.ingest.decode import decode_event
from detector.simulate import FEATURES, MODELS, Scenario, generate

START_MS = 1_700_000_000_000


def events(scenario: Scenario) -> list[dict[str, Any]]:
    return list(generate(scenario, START_MS))


def is_abusive(event: dict[str, Any], scenario: Scenario) -> bool:
    return bool(event["session_id"] == f"{scenario.abuse_tenant}-loop")


def test_same_seed_same_events() -> None:
    assert events(Scenario(seed=11)) == events(Scenario(seed=11))


def test_different_seed_different_events() -> None:
    assert events(Scenario(seed=1)) != events(Scenario(seed=2))


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_events_are_in_ts_order_within_the_duration(seed: int) -> None:
    scenario = Scenario(seed=seed)
    got = events(scenario)
    stamps = [e["ts"] for e in got]
    assert stamps == sorted(stamps)
    assert stamps[0] >= START_MS
    assert stamps[-1] < START_MS + scenario.duration_s * 1000


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_abuse_only_after_abuse_at(seed: int) -> None:
    scenario = Scenario(seed=seed)
    got = events(scenario)
    abusive = [e for e in got if is_abusive(e, scenario)]
    assert len(abusive) > 0
    assert min(e["ts"] for e in abusive) >= START_MS + scenario.abuse_at_s * 1000
    assert all(e["tenant_id"] == scenario.abuse_tenant for e in abusive)
    assert all(e["output_tokens"] >= scenario.abuse_output_tokens for e in abusive)
    before = [e for e in got if e["ts"] < START_MS + scenario.abuse_at_s * 1000]
    assert before
    assert not any(is_abusive(e, scenario) for e in before)


def test_abuse_rate_is_roughly_as_asked() -> None:
    scenario = Scenario(seed=3, duration_s=120.0, abuse_at_s=20.0, abuse_rate_per_s=10.0)
    abusive = [e for e in events(scenario) if is_abusive(e, scenario)]
    expected = (scenario.duration_s - scenario.abuse_at_s) * scenario.abuse_rate_per_s
    assert 0.8 * expected <= len(abusive) <= 1.2 * expected


def test_no_abuse_tenant_no_abuse() -> None:
    scenario = Scenario(abuse_tenant=None)
    got = events(scenario)
    assert got
    assert not any(e["session_id"].endswith("-loop") for e in got)


def test_abuse_after_the_end_never_happens() -> None:
    scenario = Scenario(duration_s=10.0, abuse_at_s=20.0)
    assert not any(is_abusive(e, scenario) for e in events(scenario))


def test_event_ids_are_unique_and_seeded() -> None:
    got = events(Scenario(seed=5))
    ids = [e["event_id"] for e in got]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("sim-5-") for i in ids)


def test_background_events_use_known_values() -> None:
    scenario = Scenario(seed=9)
    got = [e for e in events(scenario) if not is_abusive(e, scenario)]
    models = {m for m, _, _ in MODELS}
    tenants = {f"tenant-{i}" for i in range(scenario.tenants)}
    assert {e["model"] for e in got} <= models
    assert {e["feature"] for e in got} <= set(FEATURES)
    assert {e["tenant_id"] for e in got} == tenants
    assert all(e["user_id"].startswith(e["tenant_id"] + "-user-") for e in got)
    assert all(e["input_tokens"] >= 1 and e["output_tokens"] >= 1 for e in got)
    assert all(e.get("cached_input_tokens", 0) <= e["input_tokens"] for e in got)


def test_background_rate_is_roughly_as_asked() -> None:
    scenario = Scenario(seed=4, abuse_tenant=None)
    expected = scenario.duration_s * scenario.rate_per_s
    assert 0.9 * expected <= len(events(scenario)) <= 1.1 * expected


def test_every_generated_event_decodes() -> None:
    scenario = Scenario(seed=13)
    end_ms = START_MS + int(scenario.duration_s * 1000)
    for event in events(scenario):
        decoded = decode_event(orjson.dumps(event), end_ms, 300, 3600)
        assert decoded.ts_ms == event["ts"]
        assert decoded.event_id == event["event_id"]
