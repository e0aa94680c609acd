"""The plans file: what each tenant pays per month, for the unit-economics report.

```yaml
unprofitable_share: 0.8      # flag cost above 80% of revenue (default 1.0: above revenue)
default_plan: free           # plan of tenants not listed (optional; unlisted means no plan)
plans:
  free: {revenue_usd: 0, per: tenant}
  team: {revenue_usd: 20, per: user}         # per active user of the month
  enterprise: {revenue_usd: 5000, per: tenant}
tenants:
  acme: enterprise
  globex: team
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from detector.errors import ConfigError
from detector.schemas import TENANT_PATTERN

_TENANT_RE = re.compile(TENANT_PATTERN)


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    revenue_usd: float = Field(ge=0, le=1e9, allow_inf_nan=False)
    per: Literal["tenant", "user"]

    @property
    def revenue_usd_micros(self) -> int:
        return round(self.revenue_usd * 1_000_000)


class Plans(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    plans: dict[str, Plan] = Field(min_length=1)
    tenants: dict[str, str] = Field(default_factory=dict)
    default_plan: str | None = None
    unprofitable_share: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False)

    @field_validator("tenants")
    @classmethod
    def _tenant_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for tenant in value:
            if not _TENANT_RE.fullmatch(tenant):
                raise ValueError(
                    f"{tenant!r} is not a tenant id (1-128 of A-Z a-z 0-9 . _ : @ / + = -)"
                )
        return value

    def plan_of(self, tenant: str) -> tuple[str, Plan] | None:
        name = self.tenants.get(tenant, self.default_plan)
        return None if name is None else (name, self.plans[name])


def load_plans(path: Path) -> Plans:
    """Read and validate a plans file; a problem raises ConfigError naming file, field, value."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot read the plans file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path.name}: not UTF-8 text (byte {exc.start})") from exc
    return parse_plans(text, path.name)


def parse_plans(text: str, source: str) -> Plans:
    """Validate plans text.

    >>> parse_plans("plans: {p: {revenue_usd: -1, per: tenant}}", "plans.yaml")
    Traceback (most recent call last):
    ...
    detector.errors.ConfigError: plans.yaml: plans.p.revenue_usd: Input should be greater than or equal to 0, got -1
    """  # noqa: E501
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'plans' mapping at the top")
    try:
        plans = Plans.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(source, err) for err in exc.errors())) from exc
    problems = [
        f"{source}: tenants.{tenant}: unknown plan {name!r}; plans are {', '.join(plans.plans)}"
        for tenant, name in plans.tenants.items()
        if name not in plans.plans
    ]
    if plans.default_plan is not None and plans.default_plan not in plans.plans:
        problems.append(
            f"{source}: default_plan: unknown plan {plans.default_plan!r}; "
            f"plans are {', '.join(plans.plans)}"
        )
    if problems:
        raise ConfigError("\n".join(problems))
    return plans


def _describe(source: str, err: Any) -> str:
    where = ".".join(str(part) for part in err["loc"] if part != "[key]")
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{source}: {where}: is required"
    if err["type"] == "extra_forbidden":
        return f"{source}: {where}: unknown key"
    got = err.get("input")
    if isinstance(got, dict):
        return f"{source}: {where}: {message}"
    return f"{source}: {where}: {message}, got {got!r}"
