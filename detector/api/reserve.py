"""POST /v1/reserve: hold an estimated cost against the budgets a request falls under."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from detector.api.routes import BadRequest, now_ms
from detector.api.state import ApiState
from detector.decisions.reservations import applicable
from detector.errors import RulesError
from detector.pricing import price_event
from detector.redis_client import REDIS_ERRORS
from detector.schemas import IDENT_PATTERN, TENANT_PATTERN, Scope, UsageEvent

MAX_HOLD_S = 3600


class ReserveRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str = Field(pattern=IDENT_PATTERN)
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    user_id: str | None = Field(default=None, pattern=IDENT_PATTERN)
    api_key_id: str | None = Field(default=None, pattern=IDENT_PATTERN)
    feature: str | None = Field(default=None, pattern=IDENT_PATTERN)
    model: str | None = Field(default=None, pattern=IDENT_PATTERN)
    session_id: str | None = Field(default=None, pattern=IDENT_PATTERN)
    estimated_cost_usd: float | None = Field(
        default=None, gt=0, le=10_000, allow_inf_nan=False, strict=True
    )
    input_tokens: int = Field(default=0, ge=0, le=10**8, strict=True)
    output_tokens: int = Field(default=0, ge=0, le=10**8, strict=True)
    hold_s: int = Field(default=120, ge=1, le=MAX_HOLD_S, strict=True)

    @model_validator(mode="after")
    def _estimate_given(self) -> ReserveRequest:
        if self.estimated_cost_usd is None and (
            self.model is None or self.input_tokens + self.output_tokens == 0
        ):
            raise ValueError("give estimated_cost_usd, or model with input/output tokens")
        return self

    def named(self) -> dict[Scope, str]:
        values = {
            Scope.user: self.user_id,
            Scope.api_key: self.api_key_id,
            Scope.feature: self.feature,
            Scope.model: self.model,
            Scope.session: self.session_id,
        }
        return {scope: value for scope, value in values.items() if value is not None}


async def post_reserve(request: web.Request) -> web.Response:
    state: ApiState = request.app[ApiState.KEY]
    state.authenticate(request)
    try:
        body: Any = await request.json()
        ask = ReserveRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequest(f"{where}: {str(err['msg']).removeprefix('Value error, ')}") from None
    except ValueError:
        raise BadRequest("body must be a JSON object") from None
    state.authorize(request, "decision:read", ask.tenant_id)
    try:
        rules = state.current_rules()
    except RulesError as exc:
        return web.json_response({"error": f"rules unavailable: {exc}"}, status=503)
    amount_micros = _estimate_micros(state, ask)
    at_ms = now_ms()
    budgets = applicable(rules, ask.tenant_id, ask.named())
    try:
        result = await state.decisions.reservations.reserve(
            ask.tenant_id,
            ask.request_id,
            amount_micros,
            budgets,
            ask.hold_s,
            at_ms,
            zone=rules.zone(ask.tenant_id),
        )
    except REDIS_ERRORS:
        # A reservation that cannot be checked is not granted, whatever fail_open says.
        state.redis_down()
        return web.json_response({"error": "budget store unavailable"}, status=503)
    remaining = [h.remaining_usd_micros for h in result.budgets]
    return web.json_response(
        {
            "granted": result.granted,
            "request_id": ask.request_id,
            "held_usd": amount_micros / 1_000_000 if result.granted else 0.0,
            "expires_in_s": ask.hold_s if result.granted else None,
            "remaining_usd": min(remaining) / 1_000_000 if remaining else None,
            "budgets": [
                {
                    "rule_id": h.budget.id,
                    "scope": h.scope.value,
                    "entity_id": h.entity_id,
                    "remaining_usd": h.remaining_usd_micros / 1_000_000,
                }
                for h in result.budgets
            ],
        }
    )


def _estimate_micros(state: ApiState, ask: ReserveRequest) -> int:
    if ask.estimated_cost_usd is not None:
        return max(1, round(ask.estimated_cost_usd * 1_000_000))
    event = UsageEvent(
        event_id=ask.request_id,
        ts_ms=0,
        tenant_id=ask.tenant_id,
        model=ask.model or "",
        input_tokens=ask.input_tokens,
        output_tokens=ask.output_tokens,
    )
    costs = price_event(event, state.prices())
    if not costs.priced:
        raise BadRequest(f"model {ask.model!r} has no price; give estimated_cost_usd")
    return max(1, costs.total_usd_micros)
