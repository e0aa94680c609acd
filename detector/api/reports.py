"""GET /v1/reports/{name}: the cost-attribution reports, the same numbers as `detector report`."""

from __future__ import annotations

from aiohttp import web

from detector.api.routes import BadRequest, now_ms
from detector.api.state import ApiState
from detector.config import Settings
from detector.redis_client import REDIS_ERRORS
from detector.reports.catalog import build_report, parse_query
from detector.reports.plans import Plans
from detector.reports.reads import RollupReader
from detector.reports.service import plans_of

PLANS: web.AppKey[Plans | None] = web.AppKey("detector_plans")


def setup(app: web.Application, settings: Settings) -> None:
    """Read the plans file once, at start (a bad one stops the API), and add the route."""
    app[PLANS] = plans_of(settings)
    app.router.add_get("/v1/reports/{name}", get_report)


async def get_report(request: web.Request) -> web.Response:
    """One report for one tenant, or for all of them with a token not bound to a tenant."""
    state: ApiState = request.app[ApiState.KEY]
    state.authenticate(request)
    q = request.query
    try:
        query = parse_query(
            request.match_info["name"], q.get("tenant_id"), q.get("period"), q.get("at"),
            q.get("top"), now_ms(),
        )  # fmt: skip
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    state.authorize(request, "spend:read", query.tenant_id)
    reader = RollupReader(state.redis, state.windows)
    try:
        report = await build_report(query, reader, request.app[PLANS])
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    except REDIS_ERRORS:
        state.redis_errors.inc()
        return web.json_response({"error": "Redis unreachable; try again"}, status=503)
    return web.json_response(report.as_json())
