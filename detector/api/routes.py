"""Read-only lookups for gateways: decisions and spend."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from detector.api.state import ApiState
from detector.decisions.reservations import applicable
from detector.decisions.store import Entity
from detector.errors import RulesError
from detector.redis_client import REDIS_ERRORS
from detector.schemas import IDENT_PATTERN, TENANT_PATTERN, Action, LookupAnswer, Scope
from detector.windows.buckets import WINDOWS

log = logging.getLogger("detector.api")

ENTITY_PARAMS = {
    "user_id": Scope.user,
    "api_key_id": Scope.api_key,
    "feature": Scope.feature,
    "model": Scope.model,
    "session_id": Scope.session,
}
# fullmatch, not match: `$` would also accept a value that ends with a newline.
_TENANT_RE = re.compile(TENANT_PATTERN)
_IDENT_RE = re.compile(IDENT_PATTERN)


class BadRequest(Exception):
    """Becomes a 422 with the message as `error`."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tenant_param(request: web.Request) -> str:
    value = request.query.get("tenant_id")
    if not value:
        raise BadRequest("tenant_id is required")
    if not _TENANT_RE.fullmatch(value):
        raise BadRequest("tenant_id must be 1-128 characters of A-Z a-z 0-9 . _ : @ / + = -")
    return value


def ident_param(request: web.Request, name: str) -> str | None:
    return _ident(request.query.get(name), name)


def _ident(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not _IDENT_RE.fullmatch(value):
        raise BadRequest(f"{name} must be 1-256 printable characters")
    return value


def lookup_entities(tenant: str, params: Mapping[str, str]) -> list[Entity]:
    """The tenant and every entity a lookup names, validated."""
    entities: list[Entity] = [(tenant, Scope.tenant, tenant)]
    for param, scope in ENTITY_PARAMS.items():
        value = _ident(params.get(param), param)
        if value is not None:
            entities.append((tenant, scope, value))
    return entities


async def answer_for(state: ApiState, entities: list[Entity], at_ms: int) -> LookupAnswer:
    """The gateway's answer: the strictest decision in force, or allow."""
    try:
        found = await state.lookup(entities, at_ms)
    except REDIS_ERRORS:
        state.redis_down()
        closed = state.settings.fails_closed(entities[0][0])
        action = Action.block if closed else Action.allow
        return LookupAnswer(action=action, retry_after_s=None, reasons=[], degraded=True)
    if not found:
        return LookupAnswer(action=Action.allow, retry_after_s=None, reasons=[])
    top = found[0]
    reasons: list[dict[str, str | int | bool]] = [
        {
            "rule_id": d.rule_id,
            "scope": d.scope.value,
            "entity_id": d.entity_id,
            "action": d.action.value,
            "until": d.until,
            "reason": d.reason,
            **({"rate_per_min": d.rate_per_min} if d.rate_per_min else {}),
        }
        for d in found
    ]
    # A throttle names its own wait when its rule sets one; otherwise wait until it ends.
    until_end_s = max(1, (top.until_ms - at_ms + 999) // 1000)
    retry_after_s = min(top.retry_after_s, until_end_s) if top.retry_after_s else until_end_s
    return LookupAnswer(action=top.action, retry_after_s=retry_after_s, reasons=reasons)


async def get_decision(request: web.Request) -> web.Response:
    """The strictest decision in force for any entity named in the query."""
    state: ApiState = request.app[ApiState.KEY]
    state.authenticate(request)
    tenant = tenant_param(request)
    state.authorize(request, "decision:read", tenant)
    entities = lookup_entities(tenant, request.query)
    budgets_flag = request.query.get("budgets", "false")
    if budgets_flag not in ("1", "0", "true", "false"):
        raise BadRequest(f"budgets must be true or false, got {budgets_flag[:20]!r}")
    at_ms = now_ms()
    answer = await answer_for(state, entities, at_ms)
    if budgets_flag in ("1", "true"):
        answer = await with_remaining(state, answer, entities, at_ms)
    return web.json_response(text=answer.model_dump_json())


async def with_remaining(
    state: ApiState, answer: LookupAnswer, entities: list[Entity], at_ms: int
) -> LookupAnswer:
    """The answer with what is left of the budgets that apply (one Redis call, not cached)."""
    try:
        rules = state.current_rules()
        tenant = entities[0][0]
        named = {scope: entity for _, scope, entity in entities[1:]}
        budgets = applicable(rules, tenant, named)
        held = await state.decisions.reservations.remaining(
            tenant, budgets, at_ms, rules.zone(tenant)
        )
    except (RulesError,) + REDIS_ERRORS:
        return answer.model_copy(update={"degraded": True})
    if not held:
        return answer
    least = min(h.remaining_usd_micros for h in held)
    return answer.model_copy(update={"remaining_usd": max(least, 0) / 1_000_000})


MAX_BATCH = 1000


async def post_decision_batch(request: web.Request) -> web.Response:
    """Answers for many lookups at once: {"requests": [{tenant_id, user_id, ...}, ...]}."""
    state: ApiState = request.app[ApiState.KEY]
    state.authenticate(request)
    try:
        body: Any = await request.json()
    except ValueError:
        raise BadRequest('body must be JSON: {"requests": [...]}') from None
    asks = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(asks, list) or not 1 <= len(asks) <= MAX_BATCH:
        raise BadRequest(f"requests must be a list of 1 to {MAX_BATCH} lookups")
    at_ms = now_ms()
    answers = []
    for index, ask in enumerate(asks):
        if not isinstance(ask, dict) or not all(isinstance(v, str) for v in ask.values()):
            raise BadRequest(f"requests[{index}] must be an object of strings")
        tenant = ask.get("tenant_id") or ""
        if not _TENANT_RE.fullmatch(tenant):
            raise BadRequest(f"requests[{index}].tenant_id is missing or invalid")
        state.authorize(request, "decision:read", tenant)
        try:
            entities = lookup_entities(tenant, ask)
        except BadRequest as exc:
            raise BadRequest(f"requests[{index}].{exc}") from None
        answers.append(await answer_for(state, entities, at_ms))
    return web.json_response({"answers": [a.model_dump(mode="json") for a in answers]})


async def get_spend(request: web.Request) -> web.Response:
    """All metrics of one entity's window."""
    state: ApiState = request.app[ApiState.KEY]
    state.authenticate(request)
    scope_text = request.query.get("scope", "tenant")
    try:
        scope = Scope(scope_text)
    except ValueError:
        raise BadRequest(
            f"scope must be one of {', '.join(s.value for s in Scope)}, got {scope_text!r}"
        ) from None
    window = request.query.get("window", "1h")
    if window not in WINDOWS:
        raise BadRequest(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
    # Parameters a scope does not use are still checked: a malformed one is an error, not
    # something silently ignored.
    given_id = request.query.get("id")
    if given_id is not None and not _IDENT_RE.fullmatch(given_id):
        raise BadRequest("id must be 1-256 printable characters")
    if scope is Scope.global_:
        if "tenant_id" in request.query:
            tenant_param(request)
        tenant = "_global"
    else:
        tenant = tenant_param(request)
    state.authorize(request, "spend:read", None if scope is Scope.global_ else tenant)
    if scope is Scope.global_:
        entity = "all"
    elif scope is Scope.tenant:
        entity = tenant
    else:
        entity = given_id or ""
        if not entity:
            raise BadRequest(f"id is required for scope {scope.value}")
    try:
        rules = state.current_rules()
    except RulesError as exc:  # calendar windows depend on the tenant's time zone
        return web.json_response({"error": f"rules unavailable: {exc}"}, status=503)
    zone = rules.zone(tenant) if scope is not Scope.global_ else None
    [metrics] = await state.windows.read_windows(
        [(tenant, scope, entity, window)], now_ms(), rules.zone
    )
    body = {"scope": scope.value, "tenant_id": tenant, "id": entity, "window": window}
    return web.json_response({**body, "time_zone": str(zone or "UTC"), "metrics": metrics})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state: ApiState = request.app[ApiState.KEY]
    try:
        await state.redis.ping()
    except REDIS_ERRORS:
        state.redis_down()
        return web.json_response({"status": "redis unreachable"}, status=503)
    return web.json_response({"status": "ready"})
