"""The HTTP side of the metrics (service/metrics.py holds the families): every request
counted and timed by route template, and the /metrics answer."""

from __future__ import annotations

import hmac
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.errors import Code, DomainError
from service.metrics import (
    CONTENT_TYPE,
    HTTP_DURATION,
    HTTP_IN_FLIGHT,
    HTTP_REQUESTS,
    UNMATCHED,
    exposition,
)


async def scrape(extra: bytes = b"") -> Response:
    """The answer of GET /metrics: `exposition()` plus `extra` families of the caller's."""
    body = await run_in_threadpool(exposition)
    return Response(body + extra, media_type=CONTENT_TYPE)


async def require_scraper(request: Request) -> None:
    """A route dependency of /metrics: with CUSTOMERS_METRICS_TOKEN set, only a scraper that
    sends `Authorization: Bearer <token>` is answered (401 otherwise)."""
    expected = request.app.state.settings.metrics_token
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise DomainError(Code.UNAUTHORIZED, "/metrics needs the metrics token")


class HttpMetrics:
    """Counts and times every request by method, route template and status. Plain ASGI
    (see service.request_log.RequestLog); the route is the one Starlette's router matched, so
    `/api/v1/customers/{customer_id}`, never a path with an id in it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Bound children by label values: `labels()` takes a lock and builds a key each call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception escaping the app becomes a 500 outside it

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            HTTP_IN_FLIGHT.dec()
            key = (scope["method"], route_template(scope), status)
            children = self._children.get(key)
            if children is None:
                children = (
                    HTTP_REQUESTS.labels(key[0], key[1], str(status)),
                    HTTP_DURATION.labels(key[0], key[1]),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The path template of the route that handled the request (set by the router)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED
