"""The few exception types the detector raises on purpose."""

from __future__ import annotations


class DetectorError(Exception):
    """Base of every error the detector raises deliberately."""


class ConfigError(DetectorError):
    """A setting is missing or wrong; the message names the variable and the value."""


class RulesError(DetectorError):
    """rules.yaml is invalid; the message names the file, the rule, the field and the value."""


class BadEvent(DetectorError):
    """An event failed validation; `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SinkError(DetectorError):
    """An output (Slack, Kafka) refused or failed to take a message."""
