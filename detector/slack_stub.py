"""A local stand-in for Slack that records what it receives (demo and tests; no internet here).

It answers an incoming-webhook path and the Web API methods the notifier uses
(chat.postMessage, chat.update, conversations.history, conversations.replies), gives channel
names ids and messages timestamps as Slack does, and can be told to fail requests with 429
(and a Retry-After) or 500, to answer slowly, or to post a message and still answer 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web


class SlackStub:
    """Records posted messages; `fail_next` queues status codes to answer before succeeding.

    `fail_cycle` (status codes, 200 meaning success) is applied to requests in turn once
    `fail_next` is empty; `post_then_fail` queues statuses answered after a post was recorded
    (the post landed, the client cannot know), and `post_then_fail_every` does that to every
    n-th post; `delay_s` slows every answer.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.fail_next: deque[int] = deque()
        self.fail_cycle: list[int] = []
        self.post_then_fail: deque[int] = deque()
        self.post_then_fail_every = 0
        self.refuse_channels: set[str] = set()  # answered ok=false, channel_not_found
        self.retry_after_s = 1
        self.delay_s = 0.0
        self.requests = 0
        self.statuses: list[int] = []
        self._runner: web.AppRunner | None = None
        self._ts = 0
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

    @staticmethod
    def channel_id(channel: str) -> str:
        """The id Slack would give a channel name (ids are kept as they are).

        >>> SlackStub.channel_id("#llm-spend"), SlackStub.channel_id("C0ABC")
        ('C83036270', 'C0ABC')
        """
        if channel[:1] in ("C", "G", "D") and channel[1:].isalnum() and channel.isupper():
            return channel
        return "C" + hashlib.sha1(channel.encode()).hexdigest()[:8].upper()  # noqa: S324

    def in_channel(self, channel: str) -> list[dict[str, Any]]:
        """Top-level messages (not thread replies) in a channel, oldest first."""
        cid = self.channel_id(channel)
        return [m for m in self.messages if m.get("channel_id") == cid and not m.get("thread_ts")]

    def replies(self, ts: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("thread_ts") == ts]

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/services/{path:.*}", self._webhook)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        app.router.add_post("/api/chat.update", self._update)
        app.router.add_route("*", "/api/conversations.history", self._history)
        app.router.add_route("*", "/api/conversations.replies", self._replies)
        app.router.add_route("*", "/api/conversations.list", self._list)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _failure(self) -> web.Response | None:
        self.requests += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_next:
            status = self.fail_next.popleft()
        elif self.fail_cycle:
            status = self.fail_cycle[(self.requests - 1) % len(self.fail_cycle)]
        else:
            status = 200
        self.statuses.append(status)
        if status == 200:
            return None
        return self._error(status)

    def _error(self, status: int) -> web.Response:
        headers = {"Retry-After": str(self.retry_after_s)} if status == 429 else {}
        return web.Response(status=status, text="rate_limited", headers=headers)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.text()
        if request.content_type == "application/json":
            body: dict[str, Any] = json.loads(raw) if raw else {}
        else:
            body = dict(parse_qsl(raw))
        body.update(dict(request.query))
        for name in ("blocks", "metadata"):
            if isinstance(body.get(name), str):
                body[name] = json.loads(body[name])
        return body

    async def _webhook(self, request: web.Request) -> web.Response:
        failure = await self._failure()
        if failure is not None:
            return failure
        self.messages.append(json.loads(await request.text()))
        return web.Response(text="ok")

    async def _post_message(self, request: web.Request) -> web.Response:
        failure = await self._failure()
        if failure is not None:
            return failure
        body = await self._body(request)
        if body.get("channel") in self.refuse_channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        body["_auth"] = request.headers.get("Authorization", "")
        # Slack's ts: epoch seconds with microseconds, unique and increasing in a channel.
        self._ts = max(self._ts + 1, time.time_ns() // 1000)
        body["ts"] = f"{self._ts // 10**6}.{self._ts % 10**6:06d}"
        body["channel_id"] = self.channel_id(str(body.get("channel", "")))
        self.messages.append(body)
        if self.post_then_fail:
            return self._error(self.post_then_fail.popleft())
        if self.post_then_fail_every and len(self.messages) % self.post_then_fail_every == 0:
            return self._error(500)
        return web.json_response({"ok": True, "channel": body["channel_id"], "ts": body["ts"]})

    async def _update(self, request: web.Request) -> web.Response:
        failure = await self._failure()
        if failure is not None:
            return failure
        body = await self._body(request)
        self.updates.append(body)
        for message in self.messages:
            if message.get("ts") == body.get("ts"):
                message["text"], message["blocks"] = body.get("text"), body.get("blocks")
        return web.json_response({"ok": True, "channel": body.get("channel"), "ts": body.get("ts")})

    def _listing(self, found: list[dict[str, Any]], oldest: str) -> web.Response:
        listed = [
            {"ts": m["ts"], "text": m.get("text"), "metadata": m.get("metadata")}
            for m in found
            if float(m["ts"]) >= float(oldest or 0)
        ]
        return web.json_response({"ok": True, "messages": listed[::-1], "has_more": False})

    async def _history(self, request: web.Request) -> web.Response:
        failure = await self._failure()
        if failure is not None:
            return failure
        body = await self._body(request)
        return self._listing(self.in_channel(str(body["channel"])), str(body.get("oldest", 0)))

    async def _list(self, request: web.Request) -> web.Response:
        failure = await self._failure()
        if failure is not None:
            return failure
        names = {str(m.get("channel", "")) for m in self.messages if m.get("channel_id")}
        channels = [{"id": self.channel_id(n), "name": n.lstrip("#")} for n in sorted(names) if n]
        return web.json_response({"ok": True, "channels": channels})

    async def _replies(self, request: web.Request) -> web.Response:
        failure = await self._failure()
        if failure is not None:
            return failure
        body = await self._body(request)
        return self._listing(self.replies(str(body["ts"])), str(body.get("oldest", 0)))
