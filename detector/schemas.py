"""Wire types: the cost event in, the decisions and alerts out."""

from __future__ import annotations

from enum import IntEnum, StrEnum

from pydantic import BaseModel, ConfigDict, Field

# Identifiers come from users' traffic and end up in Redis keys, log lines and Slack messages,
# so they are bounded and printable. A tenant id also sits inside a Redis Cluster hash tag,
# which braces would break, so it is held to a stricter alphabet.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$"
IDENT_PATTERN = r"^[^\x00-\x1f\x7f]{1,256}$"
MAX_TAGS = 32


class Scope(StrEnum):
    """A dimension that spend is counted along."""

    global_ = "global"
    tenant = "tenant"
    user = "user"
    feature = "feature"
    model = "model"
    api_key = "api_key"
    session = "session"


class Action(StrEnum):
    allow = "allow"
    throttle = "throttle"
    block = "block"
    alert = "alert"


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


class AlertKind(StrEnum):
    rule = "rule"
    budget = "budget"
    anomaly = "anomaly"
    abuse = "abuse"
    unpriced_model = "unpriced_model"
    digest = "digest"  # the daily or weekly spend digest (reports), not an incident


class Strictness(IntEnum):
    """Order of actions at the gateway: the strictest applicable decision wins."""

    allow = 0
    throttle = 1
    block = 2


class EventStatus(StrEnum):
    ok = "ok"
    error = "error"


class UsageEvent(BaseModel):
    """One LLM call as the gateway reported it, validated; `ts_ms` is event time in epoch ms."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: str = Field(pattern=IDENT_PATTERN)
    ts_ms: int
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    user_id: str | None = Field(default=None, pattern=IDENT_PATTERN)
    feature: str | None = Field(default=None, pattern=IDENT_PATTERN)
    api_key_id: str | None = Field(default=None, pattern=IDENT_PATTERN)
    session_id: str | None = Field(default=None, pattern=IDENT_PATTERN)
    model: str = Field(pattern=IDENT_PATTERN)
    provider: str | None = Field(default=None, pattern=IDENT_PATTERN)
    input_tokens: int = Field(default=0, ge=0, le=10**9)
    output_tokens: int = Field(default=0, ge=0, le=10**9)
    cached_input_tokens: int = Field(default=0, ge=0, le=10**9)
    reasoning_tokens: int = Field(default=0, ge=0, le=10**9)
    cache_creation_input_tokens: int = Field(default=0, ge=0, le=10**9)
    cost_usd: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    status: EventStatus = EventStatus.ok
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    tags: dict[str, str] = Field(default_factory=dict, max_length=MAX_TAGS)

    def entity(self, scope: Scope) -> str | None:
        """The id of this event's entity along `scope`, or None when the event has none.

        >>> ev = UsageEvent(event_id="e", ts_ms=0, tenant_id="t", user_id="u", feature="f",
        ...                 model="m", input_tokens=1, output_tokens=1)
        >>> [ev.entity(s) for s in Scope]
        ['all', 't', 'u', 'f', 'm', None, None]
        """
        name = _ENTITY_FIELD[scope]
        return "all" if name is None else getattr(self, name)


# The event field that holds each scope's entity id (a table: looked up per event and scope).
_ENTITY_FIELD: dict[Scope, str | None] = {
    Scope.global_: None,
    Scope.tenant: "tenant_id",
    Scope.user: "user_id",
    Scope.feature: "feature",
    Scope.model: "model",
    Scope.api_key: "api_key_id",
    Scope.session: "session_id",
}


class Decision(BaseModel):
    """A rate-limit decision for one entity, as stored in Redis and published on Kafka."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant_id: str
    scope: Scope
    entity_id: str
    action: Action
    until: str  # RFC 3339
    until_ms: int
    rule_id: str
    reason: str
    decided_at: str  # RFC 3339
    shadow: bool = False
    retry_after_s: int | None = None  # a throttle's suggested wait, when the rule sets one
    rate_per_min: int | None = None  # a throttle's allowed request rate, when the rule sets one
    source: str = "rule"  # "rule", or "manual" for an override
    actor: str | None = None  # who made a manual override ("api", "cli:<user>")
    lifted: bool = False  # an audit entry for an override or decision lifted early


class Alert(BaseModel):
    """An alert as published on llm.cost.alerts and rendered to Slack."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_id: str
    kind: AlertKind
    rule_id: str
    severity: Severity
    tenant_id: str
    scope: Scope
    entity_id: str
    window: str
    metric: str
    observed: float
    threshold: float | None = None
    expected: float | None = None
    band: tuple[float, float] | None = None
    score: float | None = None  # anomaly score in [0, 1], for anomaly alerts
    contributors: list[dict[str, str | float]] = Field(default_factory=list)
    action: Action
    until: str | None = None
    shadow: bool = False
    event_time: str
    created_at: str
    message: str


class LookupAnswer(BaseModel):
    """What the lookup API tells a gateway about one request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Action
    retry_after_s: int | None
    reasons: list[dict[str, str | int | bool]]
    degraded: bool = False
    remaining_usd: float | None = None  # least left of the budgets that apply, when asked
