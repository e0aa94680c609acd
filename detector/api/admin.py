"""Admin endpoints: manual overrides (block, throttle or allow an entity for a while; lift early)
and the audit trail. They need a token with the `admin` scope."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from detector.api.routes import BadRequest, ident_param, now_ms, tenant_param
from detector.api.state import ApiState
from detector.decisions.policy import lift_record, manual_decision
from detector.schemas import IDENT_PATTERN, TENANT_PATTERN, Action, Scope
from detector.windows.buckets import parse_duration_s

MAX_OVERRIDE_S = 90 * 86400


class OverrideRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant_id: str = Field(pattern=TENANT_PATTERN)
    scope: Scope
    entity_id: str | None = Field(default=None, pattern=IDENT_PATTERN)
    action: Action
    duration: str = Field(max_length=16)
    reason: str = Field(min_length=1, max_length=500)

    @field_validator("action")
    @classmethod
    def _enforceable(cls, value: Action) -> Action:
        if value is Action.alert:
            raise ValueError("must be allow, throttle or block")
        return value


def _entity(scope: Scope, tenant: str, entity: str | None) -> str:
    if scope is Scope.global_:
        raise BadRequest("scope global cannot be overridden: there is no entity to stop")
    if scope is Scope.tenant:
        return tenant
    if not entity:
        raise BadRequest(f"entity_id is required for scope {scope.value}")
    return entity


async def post_override(request: web.Request) -> web.Response:
    state: ApiState = request.app[ApiState.KEY]
    state.authenticate(request)
    try:
        body: Any = await request.json()
        ask = OverrideRequest.model_validate(body)
    except ValueError as exc:
        raise BadRequest(_describe(exc)) from None
    state.authorize(request, "admin", ask.tenant_id)
    try:
        duration_s = parse_duration_s(ask.duration)
    except ValueError as exc:
        raise BadRequest(f"duration: {exc}") from None
    if not 0 < duration_s <= MAX_OVERRIDE_S:
        raise BadRequest(f"duration must be between 1s and 90d, got {ask.duration!r}")
    entity = _entity(ask.scope, ask.tenant_id, ask.entity_id)
    at_ms = now_ms()
    decision = manual_decision(
        ask.tenant_id, ask.scope, entity, ask.action, duration_s, ask.reason, "api", at_ms
    )
    await state.decisions.override(decision, at_ms)
    await state.publish_decision(decision)
    return web.json_response(text=decision.model_dump_json(exclude={"until_ms"}), status=201)


async def delete_override(request: web.Request) -> web.Response:
    state: ApiState = request.app[ApiState.KEY]
    state.authenticate(request)
    tenant = tenant_param(request)
    state.authorize(request, "admin", tenant)
    scope_text = request.query.get("scope", "tenant")
    try:
        scope = Scope(scope_text)
    except ValueError:
        raise BadRequest(f"scope must be a scope name, got {scope_text!r}") from None
    entity = _entity(scope, tenant, ident_param(request, "entity_id"))
    reason = request.query.get("reason") or "lifted through the API"
    if len(reason) > 500:
        raise BadRequest("reason must be at most 500 characters")
    record = lift_record(tenant, scope, entity, reason, "api", now_ms())
    ended = await state.decisions.lift(record)
    await state.publish_decision(record)
    return web.json_response(
        {"lifted": [d.model_dump(mode="json", exclude={"until_ms"}) for d in ended]}
    )


async def get_audit(request: web.Request) -> web.Response:
    state: ApiState = request.app[ApiState.KEY]
    state.authenticate(request)
    tenant = tenant_param(request)
    state.authorize(request, "admin", tenant)
    entries = await state.decisions.audit(tenant, limit=200)
    return web.json_response(
        {"entries": [d.model_dump(mode="json", exclude={"until_ms"}) for d in entries]}
    )


def _describe(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        message = str(err["msg"]).removeprefix("Value error, ")
        return f"{where}: {message}"
    return "body must be a JSON object"
