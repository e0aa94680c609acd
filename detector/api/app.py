"""HTTP app factory for the lookup API (aiohttp)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from detector.api import admin, reports, reserve, routes
from detector.api.openapi import OPENAPI
from detector.api.state import ApiState, Forbidden
from detector.config import Settings
from detector.redis_client import RedisClient, connect_redis
from detector.runtime import tune_gc

log = logging.getLogger("detector.api")

API_REDIS_CONNECTIONS = 64
# A cluster client's pools (one per node) cannot make a request wait for a free connection as
# the one-server pool does: a request beyond the bound fails (and is answered per fail_open),
# so the bound per node sits well above what the API's concurrency needs.
API_CLUSTER_CONNECTIONS_PER_NODE = 512

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn expected failures into JSON errors and record count and latency per endpoint."""
    state: ApiState = request.app[ApiState.KEY]
    resource = request.match_info.route.resource
    endpoint = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
        outcome = str(response.status)
    except routes.BadRequest as exc:
        response, outcome = web.json_response({"error": str(exc)}, status=422), "422"
    except Forbidden as exc:
        response, outcome = (
            web.json_response({"error": str(exc)}, status=exc.status),
            str(exc.status),
        )
    except web.HTTPException as exc:
        # Keep the exception's headers: a 405 must say which methods are allowed.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = web.json_response({"error": exc.reason}, status=exc.status, headers=allow)
        outcome = str(exc.status)
    state.requests.labels(endpoint, outcome).inc()
    state.latency.labels(endpoint, outcome).observe(time.perf_counter() - started)
    return response


async def metrics(request: web.Request) -> web.Response:
    state: ApiState = request.app[ApiState.KEY]
    body = generate_latest(state.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def create_app(settings: Settings, redis: RedisClient | None = None) -> web.Application:
    """The API application; it owns (and closes) its Redis client unless one is given."""
    app = web.Application(middlewares=[guard])
    # A bounded pool that makes requests wait for a free connection (up to 2 s) instead of
    # failing when hundreds arrive at once.
    bound = API_CLUSTER_CONNECTIONS_PER_NODE if settings.redis_cluster else API_REDIS_CONNECTIONS
    client = redis if redis is not None else connect_redis(settings, max_connections=bound)
    app[ApiState.KEY] = ApiState(settings, client)
    app.router.add_get("/v1/decision", routes.get_decision)
    app.router.add_post("/v1/decision/batch", routes.post_decision_batch)
    app.router.add_post("/v1/reserve", reserve.post_reserve)
    app.router.add_get("/v1/spend", routes.get_spend)
    reports.setup(app, settings)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_post("/v1/admin/overrides", admin.post_override)
    app.router.add_delete("/v1/admin/overrides", admin.delete_override)
    app.router.add_get("/v1/admin/audit", admin.get_audit)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)

    async def start_cache(app: web.Application) -> None:
        cache = app[ApiState.KEY].cache
        if cache is not None:
            await cache.start()

    app.on_startup.append(start_cache)

    async def close_state(app: web.Application) -> None:
        await app[ApiState.KEY].close()

    app.on_cleanup.append(close_state)

    if redis is None:

        async def close_redis(app: web.Application) -> None:
            await client.aclose()

        app.on_cleanup.append(close_redis)
    return app


def run_api(settings: Settings) -> None:
    """Serve until interrupted."""
    app = create_app(settings)
    tune_gc()
    log.info("lookup API on http://%s:%d", settings.api_host, settings.api_port)
    web.run_app(
        app,
        host=settings.api_host,
        port=settings.api_port,
        access_log=None,
        print=None,
        loop=fast_event_loop(),
    )


def fast_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (Linux, macOS), else asyncio's own.

    On the lookup path uvloop cuts the server's CPU per request; see benches/README.md.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on the supported platforms
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
