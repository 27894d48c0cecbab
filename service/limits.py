"""Request limits: rate limits per route class for each principal and each client IP (token
buckets, in this process), and the maximum request body size.

Route classes: `exports` (exports, and a customer's export and history of personal data),
`tracking` (activity events, single or batch), `writes` (every other non-GET), `reads`. A
class's limit is requests per minute with a burst of one minute's worth; a request spends a
token from its principal's bucket and from its client address's bucket (so many principals
behind one address cannot multiply the budget). Over the limit: 429 with `Retry-After`.
Limits are per process: with N API processes the service admits up to N times as much; size
them accordingly (docs/security.md).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.errors import Code, DomainError
from service.problems import problem
from service.settings import Settings

_MAX_KEYS = 100_000
_IMPORT = "/api/v1/customers/import"
_AUTH_FAILURES = "auth-failures"  # the bucket kind of failed authentications per address


class RouteClass(StrEnum):
    READS = "reads"
    WRITES = "writes"
    EXPORTS = "exports"
    TRACKING = "tracking"


_CLASS = "x-rate-limit-class"


def limited_as(kind: RouteClass) -> dict[str, Any]:
    """A route's `openapi_extra` when its requests spend `kind` rather than its app's class
    (`app.state.route_class`: the read app's reads, the write app's writes); declared on the
    route, so the contract shows it too."""
    return {_CLASS: kind.value}


def route_class(request: Request) -> RouteClass:
    extra = getattr(request.scope.get("route"), "openapi_extra", None) or {}
    return RouteClass(extra.get(_CLASS, request.app.state.route_class))


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.per_minute = {
            RouteClass.READS: settings.rate_limit_reads_per_minute,
            RouteClass.WRITES: settings.rate_limit_writes_per_minute,
            RouteClass.EXPORTS: settings.rate_limit_exports_per_minute,
            RouteClass.TRACKING: settings.rate_limit_tracking_per_minute,
        }
        self.auth_failures_per_minute = settings.auth_failures_per_minute
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, request: Request, principal_key: str) -> None:
        """Spend one token of the principal's and the client's bucket, or raise 429."""
        client = request.client.host if request.client else "unknown"
        self.spend(route_class(request), principal_key, client)

    def spend(self, kind: RouteClass, principal_key: str, client: str) -> None:
        """`check` for a request of class `kind` (gRPC calls name theirs)."""
        limit = self.per_minute[kind]
        if limit <= 0:  # 0 = unlimited
            return
        keys = [(kind, f"principal:{principal_key}"), (kind, f"ip:{client}")]
        now = time.monotonic()
        rate = limit / 60.0
        with self._lock:
            states = [self._refill(key, now, rate, limit) for key in keys]
            short = [(1.0 - tokens) / rate for tokens in states if tokens < 1.0]
            if short:
                raise DomainError(
                    Code.RATE_LIMITED,
                    f"rate limit of {limit} {kind} per minute exceeded; retry later",
                    retry_after=max(short),
                )
            for key, tokens in zip(keys, states, strict=True):
                self._store(key, tokens - 1.0, now)

    def admit_authentication(self, client: str) -> None:
        """429 while `client` has no failed authentication left in its bucket: called before
        its credentials are looked up or verified, so a flood of guesses costs nothing."""
        limit = self.auth_failures_per_minute
        if limit <= 0:
            return
        rate = limit / 60.0
        with self._lock:
            tokens = self._refill((_AUTH_FAILURES, client), time.monotonic(), rate, limit)
        if tokens < 1.0:
            raise DomainError(
                Code.RATE_LIMITED,
                "too many failed authentications from this address; retry later",
                retry_after=(1.0 - tokens) / rate,
            )

    def failed_authentication(self, client: str) -> None:
        """Spend one of `client`'s failed authentications. Requests admitted together may
        overdraw the bucket (by as many as ran at once): the address then waits longer."""
        limit = self.auth_failures_per_minute
        if limit <= 0:
            return
        key, now = (_AUTH_FAILURES, client), time.monotonic()
        with self._lock:
            self._store(key, self._refill(key, now, limit / 60.0, limit) - 1.0, now)

    def _store(self, key: tuple[str, str], tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > _MAX_KEYS:
            self._buckets.popitem(last=False)

    def _refill(self, key: tuple[str, str], now: float, rate: float, limit: int) -> float:
        tokens, at = self._buckets.get(key, (float(limit), now))
        return min(float(limit), tokens + (now - at) * rate)


class BodyLimit:
    """413 for a body over `max_bytes` (`import_max_bytes` for file imports, which stream to
    the database), by Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int, import_max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.import_max_bytes = import_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.import_max_bytes if scope.get("path") == _IMPORT else self.max_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit, scope, receive, send)
            return
        seen, exceeded, started = 0, False, False

        async def counting() -> Message:
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # the app sees the client go; we answer
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the app makes of the cut body is not sent
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, sending)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _too_large(limit, scope, receive, send)


async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem(413, f"the request body exceeds {limit} bytes", instance=scope.get("path"))
    await response(scope, receive, send)


class Admission:
    """A cap on the requests an app serves at once (`max_concurrent_requests`; a gateway's
    read and write apps have one each): beyond it a request is refused at once with 503 and
    `Retry-After`, before any work, so that under overload the requests admitted keep their
    latency instead of every request queueing for the pools and the CPU. Health, readiness
    and metrics are always answered."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0  # one event loop serves an app: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0 or scope["path"] in _ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            response = problem(
                503,
                "the service is at capacity; retry later",
                headers={"Retry-After": "1"},
                instance=scope["path"],
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


_ALWAYS_ANSWERED = frozenset({"/health", "/ready", "/metrics"})


def install(app: FastAPI, settings: Settings) -> None:
    app.state.rate_limiter = RateLimiter(settings)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        # The route applies the caller's own limit (by role); this is the largest of them.
        import_max_bytes=max(settings.max_import_bytes.values(), default=0),
    )
    app.add_middleware(Admission, limit=settings.max_concurrent_requests)
