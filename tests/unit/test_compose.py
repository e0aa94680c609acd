"""docker-compose.yml cannot run here (no Docker engine), so its shape is checked by reading it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from detector.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_and_kraft_mode() -> None:
    services = load()["services"]
    assert set(services) == {"kafka", "redis", "worker", "api"}
    kafka_env = services["kafka"]["environment"]
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["redis"]["image"].startswith("redis:7")


def test_detector_settings_are_known_variables() -> None:
    services = load()["services"]
    known = {f"DETECTOR_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "api"):
        env = services[name]["environment"]
        assert set(env) <= known, set(env) - known
        assert env["DETECTOR_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["DETECTOR_REDIS_URL"] == "redis://redis:6379/0"
    assert services["worker"]["command"] == ["detector", "worker"]
    assert services["api"]["command"] == ["detector", "api"]
    assert services["api"]["environment"]["DETECTOR_API_HOST"] == "0.0.0.0"
