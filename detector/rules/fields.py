"""Validators shared by every section of rules.yaml (rules, budgets, anomaly)."""

from __future__ import annotations

from detector.schemas import Action
from detector.windows.buckets import parse_duration_s


def duration_s(value: object) -> int:
    """A positive duration given as seconds or as text such as 30s, 15m, 1h or 1d.

    >>> duration_s("15m"), duration_s(90)
    (900, 90)
    """
    message = "must be a duration such as 30s, 15m, 1h or 1d"
    if isinstance(value, bool):
        raise ValueError(message)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        try:
            seconds = parse_duration_s(value)
        except ValueError:
            raise ValueError(message) from None
    else:
        raise ValueError(message)
    if seconds <= 0:
        raise ValueError("must be > 0s")
    return seconds


def rule_action(value: Action) -> Action:
    """What a rule may do: alert, throttle or block (allow belongs to manual overrides)."""
    if value is Action.allow:
        raise ValueError("must be alert, throttle or block (allow is for overrides)")
    return value
