from __future__ import annotations

import os
from pathlib import Path

import pytest

from detector.config import load_settings
from detector.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DETECTOR_* variable from the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("DETECTOR_"):
            monkeypatch.delenv(name)


def config_error(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    return str(exc.value)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.rules == Path("rules.yaml")
    assert settings.log_level == "INFO"
    assert settings.fail_open is True
    assert settings.topic("llm.cost.events") == "llm.cost.events"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_KAFKA_BOOTSTRAP", "k1:9092, k2:9093")
    monkeypatch.setenv("DETECTOR_REDIS_URL", "rediss://cache:6380/2")
    monkeypatch.setenv("DETECTOR_LOG_LEVEL", "debug")
    monkeypatch.setenv("DETECTOR_TOPIC_PREFIX", "t-")
    settings = load_settings()
    assert settings.kafka_bootstrap == "k1:9092, k2:9093"
    assert settings.redis_url == "rediss://cache:6380/2"
    assert settings.log_level == "DEBUG"
    assert settings.topic("llm.cost.events") == "t-llm.cost.events"


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_REDIS_URL", "redis://env:6379/0")
    assert load_settings(redis_url="unix:///tmp/redis.sock").redis_url == "unix:///tmp/redis.sock"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.log_level = "DEBUG"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "localhost",
            "bad setting: DETECTOR_KAFKA_BOOTSTRAP='localhost': expected host:port[,host:port...]",
        ),
        (
            ":9092",
            "bad setting: DETECTOR_KAFKA_BOOTSTRAP=':9092': expected host:port[,host:port...]",
        ),
        (
            "kafka:port",
            "bad setting: DETECTOR_KAFKA_BOOTSTRAP='kafka:port': expected host:port[,host:port...]",
        ),
        (
            "a:1,,b:2",
            "bad setting: DETECTOR_KAFKA_BOOTSTRAP='a:1,,b:2': expected host:port[,host:port...]",
        ),
    ],
)
def test_bad_kafka_bootstrap(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    assert config_error(monkeypatch, "DETECTOR_KAFKA_BOOTSTRAP", value) == message


@pytest.mark.parametrize("value", ["http://cache:6379", "cache:6379", "REDIS://cache"])
def test_bad_redis_url(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    assert config_error(monkeypatch, "DETECTOR_REDIS_URL", value) == (
        f"bad setting: DETECTOR_REDIS_URL={value!r}: expected redis://host:port/db"
    )


@pytest.mark.parametrize("value", ["verbose", "TRACE", "critical", ""])
def test_bad_log_level(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    assert config_error(monkeypatch, "DETECTOR_LOG_LEVEL", value) == (
        f"bad setting: DETECTOR_LOG_LEVEL={value!r}: expected DEBUG, INFO, WARNING or ERROR"
    )


@pytest.mark.parametrize("value", ["debug", "Info", "WARNING", "error"])
def test_log_level_is_upper_cased(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DETECTOR_LOG_LEVEL", value)
    assert load_settings().log_level == value.upper()


def test_bad_integer_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_error(monkeypatch, "DETECTOR_API_PORT", "http") == (
        "bad setting: DETECTOR_API_PORT='http': Input should be a valid integer, "
        "unable to parse string as an integer"
    )


def test_every_problem_is_reported_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_REDIS_URL", "http://x")
    monkeypatch.setenv("DETECTOR_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value) == (
        "bad setting: DETECTOR_REDIS_URL='http://x': expected redis://host:port/db; "
        "DETECTOR_LOG_LEVEL='loud': expected DEBUG, INFO, WARNING or ERROR"
    )
    assert "\n" not in str(exc.value)


def test_bad_override_names_the_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(kafka_bootstrap="nohost")
    assert str(exc.value).startswith("bad setting: DETECTOR_KAFKA_BOOTSTRAP='nohost': ")


def test_config_error_keeps_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert exc.value.__cause__ is not None


def test_a_cluster_url_must_name_database_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_REDIS_URL", "redis://10.0.0.5:7000/3")
    assert config_error(monkeypatch, "DETECTOR_REDIS_CLUSTER", "true") == (
        "bad setting: DETECTOR_REDIS_CLUSTER='true': a Redis Cluster has only database 0; "
        "DETECTOR_REDIS_URL='redis://10.0.0.5:7000/3' names database 3"
    )


def test_a_cluster_is_not_reached_over_a_unix_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_REDIS_URL", "unix:///run/redis.sock")
    assert config_error(monkeypatch, "DETECTOR_REDIS_CLUSTER", "yes") == (
        "bad setting: DETECTOR_REDIS_CLUSTER='yes': a Redis Cluster is reached over TCP; "
        "DETECTOR_REDIS_URL='unix:///run/redis.sock' is a unix socket"
    )


def test_a_cluster_url_may_leave_the_database_out() -> None:
    settings = load_settings(redis_url="redis://10.0.0.5:7000", redis_cluster=True)
    assert settings.redis_cluster and settings.redis_url == "redis://10.0.0.5:7000"


def test_several_nodes_are_for_a_cluster_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_REDIS_URL", "redis://a:7000,b:7000/0")
    assert config_error(monkeypatch, "DETECTOR_REDIS_CLUSTER", "false") == (
        "bad setting: DETECTOR_REDIS_CLUSTER='false': DETECTOR_REDIS_URL='redis://a:7000,"
        "b:7000/0' names several nodes, which only a Redis Cluster has: set "
        "DETECTOR_REDIS_CLUSTER=true, or name one server"
    )
    assert load_settings(redis_cluster=True).redis_url == "redis://a:7000,b:7000/0"


def test_each_cluster_node_needs_a_port_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_REDIS_URL", "redis://a:7000,b:x/0")
    assert config_error(monkeypatch, "DETECTOR_REDIS_CLUSTER", "true") == (
        "bad setting: DETECTOR_REDIS_CLUSTER='true': expected host:port for each node of "
        "DETECTOR_REDIS_URL='redis://a:7000,b:x/0', got 'b:x'"
    )
