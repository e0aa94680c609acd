"""The `anomaly:` section of rules.yaml: which series are modelled, how, and what an anomaly does.

Validated with the rest of the file, so a bad value stops start-up with file, field and value.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from detector.rules.fields import duration_s, rule_action
from detector.schemas import Action, Scope, Severity

# Scopes a spend series can be kept for: sessions are too short-lived to learn a normal from,
# and the global scope has no owner to act on.
SERIES_SCOPES = (Scope.tenant, Scope.user, Scope.feature, Scope.model, Scope.api_key)
OUTLIER_SCOPES = (Scope.tenant, Scope.user, Scope.feature, Scope.api_key)


class _Acting(BaseModel):
    """What a finding does: alert, or throttle / block the entity `for` a while."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    action: Action = Action.alert
    for_s: int = Field(default=900, alias="for")
    retry_after_s: int | None = Field(default=None, ge=1)
    rate_per_min: int | None = Field(default=None, ge=1)
    severity: Severity = Severity.warning
    cooldown_s: int = Field(default=1800, alias="cooldown")
    shadow: bool = False

    _durations = field_validator("for_s", "cooldown_s", mode="before")(duration_s)
    _action = field_validator("action")(rule_action)


class OutlierRule(_Acting):
    """One call far dearer than its entity's usual calls (a running robust scale per entity)."""

    id: str = Field(default="cost-outlier", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    enabled: bool = True
    scopes: list[Scope] = Field(default_factory=lambda: [Scope.user, Scope.api_key], min_length=1)
    factor: float = Field(default=20.0, gt=1, strict=False)  # times the entity's typical call
    min_cost_usd: float = Field(default=1.0, ge=0)  # a call below this never pages
    warmup: int = Field(default=20, ge=1)  # calls seen before an entity may fire
    max_entities: int = Field(default=200_000, ge=100)  # kept in memory, least recent dropped

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[Scope]) -> list[Scope]:
        for scope in value:
            if scope not in OUTLIER_SCOPES:
                names = ", ".join(s.value for s in OUTLIER_SCOPES)
                raise ValueError(f"each scope must be one of {names}")
        return list(dict.fromkeys(value))


class AnomalyRule(_Acting):
    """Per-entity series of spend per interval, scored when each interval closes."""

    id: str = Field(default="spend-anomaly", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    description: str = ""
    enabled: bool = True
    scopes: list[Scope] = Field(
        default_factory=lambda: [Scope.tenant, Scope.user, Scope.feature, Scope.model],
        min_length=1,
    )
    interval_s: int = Field(default=60, alias="interval")
    # robust by default: most per-entity series are sparse (a user's minutes with spend), which
    # a daily season cannot follow, and in benches/anomaly/incidents.py it found as much as
    # `combined` at half the state and CPU.
    detector: str = "robust"
    sensitivity: float = Field(default=0.8, ge=0, le=1)
    warmup: int | None = Field(default=None, ge=1)  # intervals; None: the detector's default
    # An anomalous interval pages when it cost this much, or when the run of anomalous
    # intervals in a row it ends has cost this much above expected in all.
    min_spend_usd: float = Field(default=0.5, ge=0)
    # An interval is anomalous only if it is also this many times the entity's recent normal
    # level (the last few intervals it learned): a daily ramp that climbs step by step is
    # learned as it goes, while a jump (a loop, a leaked key, a dearer model) stands out.
    jump_factor: float = Field(default=2.0, ge=1)
    # After this many anomalous intervals in a row the new level is learned as normal: by then
    # it has been alerted on (and acted on) and is either fixed or deliberate.
    relearn_after: int = Field(default=60, ge=1)
    # A model's state is written to Redis after every this many of its intervals: a worker that
    # dies loses at most that much learning, and Redis takes 1/N of the writes.
    persist_every: int = Field(default=10, ge=1)
    grace_s: int = Field(default=10, alias="grace")  # wait for late events before closing
    max_models: int = Field(default=10_000, ge=1)  # per tenant; the tenant's own always fits
    idle_expiry_s: int = Field(default=7 * 86400, alias="idle_expiry")
    outliers: OutlierRule | None = Field(default_factory=OutlierRule)

    _more_durations = field_validator("interval_s", "idle_expiry_s", mode="before")(duration_s)

    @field_validator("grace_s", mode="before")
    @classmethod
    def _grace(cls, value: object) -> int:
        if value in (0, "0", "0s"):
            return 0
        return duration_s(value)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[Scope]) -> list[Scope]:
        for scope in value:
            if scope not in SERIES_SCOPES:
                names = ", ".join(s.value for s in SERIES_SCOPES)
                raise ValueError(f"each scope must be one of {names}")
        return list(dict.fromkeys(value))

    @field_validator("detector")
    @classmethod
    def _known_detector(cls, value: str) -> str:
        from detector.anomaly.detectors import UNIVARIATE

        if value != "default" and value not in UNIVARIATE:
            raise ValueError(f"must be default or one of {', '.join(UNIVARIATE)}")
        return value

    @field_validator("interval_s")
    @classmethod
    def _whole_day(cls, value: int) -> int:
        if 86400 % value or value < 10:
            raise ValueError("must divide a day into whole intervals of at least 10s")
        return value

    @model_validator(mode="after")
    def _fits(self) -> AnomalyRule:
        if self.grace_s >= self.interval_s:
            raise ValueError(
                f"grace: must be shorter than the interval ({self.interval_s}s), "
                f"got {self.grace_s}s"
            )
        return self

    @property
    def window(self) -> str:
        """The interval as alerts name their window, e.g. '1m'.

        >>> AnomalyRule(interval="5m", detector="default").window
        '5m'
        """
        s = self.interval_s
        if s % 3600 == 0:
            return f"{s // 3600}h"
        if s % 60 == 0:
            return f"{s // 60}m"
        return f"{s}s"
