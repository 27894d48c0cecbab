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
from typing import Any

import orjson

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
