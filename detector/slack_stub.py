"""A local stand-in for Slack that records what it receives (demo and tests; no internet here).

It answers both an incoming-webhook path and the Web API's chat.postMessage, and can be told
to fail some requests with 429 (and a Retry-After) or 500, to exercise retries.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web


class SlackStub:
    """Records posted messages; `fail_next` queues status codes to answer before succeeding."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail_next: deque[int] = deque()
        self.retry_after_s = 1
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/services/T000/B000/XXXX"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/services/{path:.*}", self._webhook)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _failure(self) -> web.Response | None:
        self.requests += 1
        if not self.fail_next:
            return None
        status = self.fail_next.popleft()
        headers = {"Retry-After": str(self.retry_after_s)} if status == 429 else {}
        return web.Response(status=status, text="rate_limited", headers=headers)

    async def _webhook(self, request: web.Request) -> web.Response:
        failure = self._failure()
        if failure is not None:
            return failure
        self.messages.append(json.loads(await request.text()))
        return web.Response(text="ok")

    async def _post_message(self, request: web.Request) -> web.Response:
        failure = self._failure()
        if failure is not None:
            return failure
        raw = await request.text()
        if request.content_type == "application/json":
            body = json.loads(raw)
        else:
            body = dict(parse_qsl(raw))
            if isinstance(body.get("blocks"), str):
                body["blocks"] = json.loads(body["blocks"])
        body["_auth"] = request.headers.get("Authorization", "")
        self.messages.append(body)
        return web.json_response({"ok": True, "channel": body.get("channel"), "ts": "1.000"})
