"""JSON logs with a request id and a correlation id; personal data never goes in (log ids,
not values), and a redaction filter on the handler scrubs what slips through anyway: e-mail
addresses and URL query strings (access logs, driver error details, exception texts).

The request id names one HTTP request of this service; the correlation id names the whole
piece of work across services: taken from an incoming `X-Correlation-ID` (or the trace id of
a W3C `traceparent`), else the request id; echoed in the answer, in every log line written
while the request runs, and sent on to the rules engine (docs/operations.md "Logs")."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import uuid
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")

CORRELATION_HEADER = "X-Correlation-ID"
# Ids taken from outside are short opaque tokens (a UUID, a trace id, a ULID …): nothing
# longer, and no characters that could carry an address or break a log line.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


_EMAIL = re.compile(r"[\w.+-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+")
_QUERY = re.compile(r"\?[^\s\"']+")


def redact(text: str) -> str:
    return _QUERY.sub("?[redacted]", _EMAIL.sub("[email]", text))


class Redactor(logging.Filter):
    """Rewrites every record before any handler formats it (message, extras, traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["requestId"] = rid
        cid = correlation_id.get()
        if cid:
            entry["correlationId"] = cid
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


def redacting_handler(stream: Any) -> logging.Handler:
    """The service's log handler: JSON lines, redacted."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(Redactor())
    handler.setFormatter(JsonFormatter())
    return handler


def configure(level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers[:] = [redacting_handler(sys.stderr)]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def valid_id(value: bytes | str | None) -> str | None:
    """`value` if it is an acceptable id from outside (see _ID), else None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if value and _ID.fullmatch(value) else None


def correlation_of(headers: dict[bytes, bytes], fallback: str) -> str:
    """The correlation id of a request with these (lower-case) headers."""
    given = valid_id(headers.get(CORRELATION_HEADER.lower().encode()))
    if given:
        return given
    trace = _TRACEPARENT.fullmatch(headers.get(b"traceparent", b"").decode("latin-1"))
    if trace and trace.group(1) != "0" * 32:
        return trace.group(1)
    return fallback


def correlation_headers() -> dict[str, str]:
    """Headers that carry the current correlation id to another service."""
    cid = correlation_id.get()
    return {CORRELATION_HEADER: cid} if cid else {}


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


def install(app: FastAPI) -> None:
    app.add_middleware(RequestLog)
