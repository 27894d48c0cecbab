"""The request log: one line per HTTP request, with the ids that tie it to what it caused."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import correlation_id, correlation_of, request_id, valid_id


class RequestLog:
    """One log line per request (ids, method, route template, path, status, duration) and
    `X-Request-Id` / `X-Correlation-ID` on the answer. Plain ASGI: Starlette's
    BaseHTTPMiddleware would add a task and a stream per request, a large share of a small
    request's cost."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = valid_id(headers.get(b"x-request-id")) or uuid.uuid4().hex
        cid = correlation_of(headers, rid)
        tokens = request_id.set(rid), correlation_id.set(cid)
        started = time.perf_counter()
        status = 500
        written: str | None = None  # X-Consistency-Token of a write: its last event's id

        async def sending(message: Message) -> None:
            nonlocal status, written
            if message["type"] == "http.response.start":
                status = message["status"]
                answer = message.get("headers", [])
                for name, value in answer:
                    if name.lower() == b"x-consistency-token":
                        written = value.decode("latin-1")
                ids = [(b"x-request-id", rid.encode()), (b"x-correlation-id", cid.encode())]
                message = {**message, "headers": [*answer, *ids]}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            extra: dict[str, Any] = {
                "method": scope["method"],
                "route": getattr(scope.get("route"), "path", None),
                "path": scope["path"],
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            }
            if written is not None:
                extra["consistencyToken"] = written
            self.log.info("request", extra=extra)
            correlation_id.reset(tokens[1])
            request_id.reset(tokens[0])
