"""rules.yaml models: what a rule may say, validated strictly (unknown keys are errors)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from detector.anomaly.schema import AnomalyRule
from detector.rules.fields import duration_s, rule_action
from detector.schemas import Action, Scope, Severity, UsageEvent
from detector.windows.buckets import (
    BUCKET_SIZES,
    SLIDING_WINDOWS,
    WINDOW_LENGTH_S,
    WINDOWS,
    filtered,
    parse_duration_s,
    shifted,
)
from detector.windows.counters import METRICS

BASE_METRICS = METRICS  # every counter a window keeps
DERIVED_METRICS = ("cost_per_request_usd", "output_input_ratio", "error_rate")
RULE_METRICS = BASE_METRICS + DERIVED_METRICS
RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class Comparison(StrEnum):
    gt = ">"
    ge = ">="


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _known_metric(value: str) -> str:
    if value not in RULE_METRICS:
        raise ValueError(f"must be one of {', '.join(RULE_METRICS)}")
    return value


def _sliding_window(value: str) -> str:
    if value not in WINDOW_LENGTH_S:
        raise ValueError(f"must be a sliding window: {', '.join(WINDOW_LENGTH_S)}")
    return value


def _global_only_alerts(scope: Scope, action: Action, what: str) -> None:
    """The global scope has no entity a gateway could hold back, so it may only alert."""
    if scope is Scope.global_ and action is not Action.alert:
        raise ValueError(
            f"action: a global {what} can only alert (there is no entity to "
            f"{action.value}), got {action.value!r}"
        )


FilterField = Literal["user", "feature", "model", "api_key", "session", "provider", "status"]
_FILTER_GETTERS = {
    "user": lambda e: e.user_id,
    "feature": lambda e: e.feature,
    "model": lambda e: e.model,
    "api_key": lambda e: e.api_key_id,
    "session": lambda e: e.session_id,
    "provider": lambda e: e.provider,
    "status": lambda e: e.status.value,
}


def _pair_scope(value: object) -> object:
    """`tenant+feature` is the feature scope: every dimension is already within its tenant."""
    if isinstance(value, str) and "+" in value:
        parts = [p.strip() for p in value.split("+")]
        if len(parts) == 2 and "tenant" in parts:
            return parts[1] if parts[0] == "tenant" else parts[0]
        raise ValueError(
            "a pair must be tenant+<scope> (other pairs: use the scope and a `where` filter)"
        )
    return value


class ThresholdRule(_Strict):
    """Fire when one window metric of an entity crosses a fixed threshold."""

    id: str = Field(pattern=RULE_ID_PATTERN)
    kind: Literal["threshold"] = "threshold"
    description: str = ""
    scope: Scope
    metric: str
    window: str
    op: Comparison = Comparison.gt
    threshold: float = Field(ge=0, strict=True)
    min_requests: int = Field(default=0, ge=0)
    action: Action = Action.alert
    for_s: int = Field(default=900, alias="for")
    retry_after_s: int | None = Field(default=None, ge=1)
    rate_per_min: int | None = Field(default=None, ge=1)  # a throttle's allowed request rate
    severity: Severity = Severity.warning
    cooldown_s: int = Field(default=600, alias="cooldown")
    shadow: bool = False
    where: dict[FilterField, str | list[str]] = Field(default_factory=dict)

    _metric = field_validator("metric")(_known_metric)
    _durations = field_validator("for_s", "cooldown_s", mode="before")(duration_s)
    _action = field_validator("action")(rule_action)
    _scope = field_validator("scope", mode="before")(_pair_scope)

    @property
    def series(self) -> str | None:
        """Name of the rule's own filtered series, when it has a `where`."""
        return f"r.{self.id}" if self.where else None

    @property
    def read_window(self) -> str:
        """The window name the rule reads: its own series when filtered."""
        return filtered(self.window, self.series) if self.series else self.window

    def matches(self, event: UsageEvent) -> bool:
        """True when the event passes every `where` filter."""
        for name, wanted in self.where.items():
            value = _FILTER_GETTERS[name](event)
            if isinstance(wanted, str) and value != wanted:
                return False
            if isinstance(wanted, list) and value not in wanted:
                return False
        return True

    @field_validator("window")
    @classmethod
    def _known_window(cls, value: str) -> str:
        if value not in WINDOWS:
            raise ValueError(f"must be one of {', '.join(WINDOWS)}")
        return value

    @model_validator(mode="after")
    def _scope_supported(self) -> ThresholdRule:
        _global_only_alerts(self.scope, self.action, "rule")
        return self


class GrowthRule(_Strict):
    """Fire when a window grew by a factor over the same window one period earlier."""

    id: str = Field(pattern=RULE_ID_PATTERN)
    kind: Literal["growth"]
    description: str = ""
    scope: Scope
    metric: str = "cost_usd"
    window: str
    compared_to: str = Field(alias="vs")  # how much earlier: 1h, 1d, 7d
    factor: float = Field(gt=1, strict=True)
    min_base: float = Field(default=0, ge=0, strict=True)
    action: Action = Action.alert
    for_s: int = Field(default=900, alias="for")
    retry_after_s: int | None = Field(default=None, ge=1)
    rate_per_min: int | None = Field(default=None, ge=1)  # a throttle's allowed request rate
    severity: Severity = Severity.warning
    cooldown_s: int = Field(default=3600, alias="cooldown")
    shadow: bool = False

    _metric = field_validator("metric")(_known_metric)
    _durations = field_validator("for_s", "cooldown_s", mode="before")(duration_s)
    _action = field_validator("action")(rule_action)

    _window = field_validator("window")(_sliding_window)

    @field_validator("compared_to")
    @classmethod
    def _period(cls, value: str) -> str:
        if value not in ("1h", "1d", "7d"):
            raise ValueError("must be 1h, 1d or 7d")
        return value

    @model_validator(mode="after")
    def _history_kept(self) -> GrowthRule:
        earlier_s = parse_duration_s(self.compared_to)
        size_s, _ = SLIDING_WINDOWS[self.window]
        kept_s = next(b.retention_s for b in BUCKET_SIZES if b.size_s == size_s)
        if earlier_s + WINDOW_LENGTH_S[self.window] > kept_s:
            raise ValueError(
                f"vs: the {self.window} window is not kept long enough to compare with "
                f"{self.compared_to} earlier, got {self.compared_to!r}"
            )
        _global_only_alerts(self.scope, self.action, "rule")
        return self

    @property
    def earlier_window(self) -> str:
        return shifted(self.window, parse_duration_s(self.compared_to))


ABUSE_SCOPES = {
    "runaway_session": (Scope.session,),
    "new_entity_burst": (Scope.user, Scope.api_key),
    "shared_key": (Scope.api_key,),
}


class AbuseRule(_Strict):
    """A built-in abuse pattern with its limits.

    runaway_session: one session's requests or cost within `window` above a limit (the
    prompt-injected agent loop). new_entity_burst: a user or key first seen less than
    `new_within` ago spending more than `max_cost_usd` within `window`. shared_key: an API key
    used by more than `max_users` distinct users, or from more than `max_tenants` tenants,
    within `window` (counted per hour, so a window rounds up to whole hours).
    """

    id: str = Field(pattern=RULE_ID_PATTERN)
    kind: Literal["abuse"]
    pattern: Literal["runaway_session", "new_entity_burst", "shared_key"]
    description: str = ""
    scope: Scope | None = None
    window: str = "5m"
    max_requests: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0, strict=True)
    new_within_s: int = Field(default=86400, alias="new_within")
    max_users: int | None = Field(default=None, ge=1)
    max_tenants: int | None = Field(default=None, ge=1)
    action: Action = Action.alert
    for_s: int = Field(default=900, alias="for")
    retry_after_s: int | None = Field(default=None, ge=1)
    rate_per_min: int | None = Field(default=None, ge=1)  # a throttle's allowed request rate
    severity: Severity = Severity.critical
    cooldown_s: int = Field(default=600, alias="cooldown")
    shadow: bool = False

    _durations = field_validator("for_s", "cooldown_s", "new_within_s", mode="before")(duration_s)
    _action = field_validator("action")(rule_action)

    _window = field_validator("window")(_sliding_window)

    @model_validator(mode="after")
    def _limits_fit_pattern(self) -> AbuseRule:
        allowed = ABUSE_SCOPES[self.pattern]
        if self.scope is not None and self.scope not in allowed:
            names = " or ".join(s.value for s in allowed)
            raise ValueError(f"scope: {self.pattern} watches {names}, got {self.scope.value!r}")
        needs = {
            "runaway_session": ("max_requests", "max_cost_usd"),
            "new_entity_burst": ("max_cost_usd",),
            "shared_key": ("max_users", "max_tenants"),
        }[self.pattern]
        if all(getattr(self, name) is None for name in needs):
            raise ValueError(f"{self.pattern} needs {' or '.join(needs)}")
        return self

    @property
    def target_scope(self) -> Scope:
        return self.scope or ABUSE_SCOPES[self.pattern][0]


def _rule_kind(value: object) -> str:
    # Anything that is not a mapping goes to the threshold branch, which says what is wrong.
    if isinstance(value, dict):
        return str(value.get("kind", "threshold"))
    return str(getattr(value, "kind", "threshold"))


Rule = Annotated[
    Annotated[ThresholdRule, Tag("threshold")]
    | Annotated[GrowthRule, Tag("growth")]
    | Annotated[AbuseRule, Tag("abuse")],
    Discriminator(
        _rule_kind,
        custom_error_type="unknown_kind",
        custom_error_message="kind: must be threshold, growth or abuse",
    ),
]

PERIOD_WINDOWS = {"day": "today", "week": "week", "month": "month"}


class BudgetRule(_Strict):
    """Spend per calendar period of each entity against an amount: alerts at fractions of it,
    each once per period, and an action once the whole amount is spent."""

    id: str = Field(pattern=RULE_ID_PATTERN)
    kind: Literal["budget"] = "budget"
    description: str = ""
    scope: Scope
    period: Literal["day", "week", "month"]
    amount_usd: float = Field(gt=0, strict=True)
    overrides: dict[str, float] = Field(default_factory=dict)
    alert_at: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0], min_length=1)
    action: Action = Action.alert
    retry_after_s: int | None = Field(default=None, ge=1)
    rate_per_min: int | None = Field(default=None, ge=1)  # a throttle's allowed request rate
    severity: Severity = Severity.warning
    shadow: bool = False

    @field_validator("overrides")
    @classmethod
    def _positive_amounts(cls, value: dict[str, float]) -> dict[str, float]:
        for entity, amount in value.items():
            if isinstance(amount, bool) or amount <= 0:
                raise ValueError(f"the amount for {entity!r} must be > 0, got {amount!r}")
        return value

    @field_validator("alert_at")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        for fraction in value:
            if isinstance(fraction, bool) or not 0 < fraction <= 1:
                raise ValueError("each fraction must be in (0, 1]")
        return sorted(set(value))

    _action = field_validator("action")(rule_action)

    @model_validator(mode="after")
    def _has_entity(self) -> BudgetRule:
        _global_only_alerts(self.scope, self.action, "budget")
        return self

    @property
    def window(self) -> str:
        return PERIOD_WINDOWS[self.period]

    def amount_for(self, entity: str) -> float:
        """The entity's budget: its override, or the rule's amount."""
        return self.overrides.get(entity, self.amount_usd)


class RuleSet(_Strict):
    """The whole rules.yaml file."""

    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)
    budgets: list[BudgetRule] = Field(default_factory=list)
    allow_list: dict[Scope, list[str]] = Field(default_factory=dict)
    anomaly: AnomalyRule | None = None  # online anomaly models; absent: none run
    # Tenant -> IANA time zone: its calendar windows (today, week, month) and budget periods
    # start at local midnight. Tenants not listed use UTC.
    time_zones: dict[str, str] = Field(default_factory=dict)

    @field_validator("time_zones")
    @classmethod
    def _known_zones(cls, value: dict[str, str]) -> dict[str, str]:
        for tenant, name in value.items():
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"{tenant}: unknown time zone {name!r} (expected an IANA name such as "
                    "Europe/Paris or America/New_York)"
                ) from None
        return value

    def zone(self, tenant: str) -> ZoneInfo | None:
        """The tenant's time zone, None for UTC."""
        name = self.time_zones.get(tenant)
        return ZoneInfo(name) if name is not None else None

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleSet:
        first: dict[str, str] = {}
        named = [(f"rules[{i}]", r.id) for i, r in enumerate(self.rules)]
        named += [(f"budgets[{i}]", b.id) for i, b in enumerate(self.budgets)]
        if self.anomaly is not None:
            named.append(("anomaly", self.anomaly.id))
            if self.anomaly.outliers is not None:
                named.append(("anomaly.outliers", self.anomaly.outliers.id))
        for place, rule_id in named:
            if rule_id in first:
                raise ValueError(
                    f"{place}.id: duplicate rule id {rule_id!r} (first used by {first[rule_id]})"
                )
            first[rule_id] = place
        return self

    def allowed(self, scope: Scope, entity: str) -> bool:
        """True when the entity is on the allow-list and must never be throttled or blocked."""
        return entity in self.allow_list.get(scope, ())
