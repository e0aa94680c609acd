"""The floor for a lookup endpoint: aiohttp, one Redis GET, a constant small JSON answer.

    .venv/bin/python benches/minimal_app.py --port 8099 --redis-url redis://127.0.0.1:6379/11

`GET /get?tenant_id=<t>&user_id=<u>` reads one key built from the query (with redis.asyncio,
which parses replies with hiredis) and answers `{"action":"allow"}` whatever it finds. Served
like `detector api`: `web.run_app`, no access log, one process. bench_api.py loads it as the
baseline; it is not part of the detector.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web
from redis.asyncio import Redis
from redis.utils import HIREDIS_AVAILABLE

from detector.api.app import fast_event_loop

REDIS: web.AppKey[Redis] = web.AppKey("redis")
BODY = b'{"action":"allow"}'


async def get(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant_id", "")
    user = request.query.get("user_id", "")
    await request.app[REDIS].get(f"bench:min:{{t:{tenant}}}:user:{user}")
    return web.Response(body=BODY, content_type="application/json")


def create_app(redis_url: str) -> web.Application:
    app = web.Application()
    client = Redis.from_url(redis_url)
    app[REDIS] = client
    app.router.add_get("/get", get)

    async def close_redis(app: web.Application) -> None:
        await client.aclose()

    app.on_cleanup.append(close_redis)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    if not HIREDIS_AVAILABLE:
        sys.exit("minimal_app: hiredis is not installed; the baseline would not match the API")
    web.run_app(
        create_app(args.redis_url),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=fast_event_loop(),  # the same event loop as `detector api`, for a fair floor
    )


if __name__ == "__main__":
    main()
