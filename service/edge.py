"""What every HTTP app of the service wears, in one order: problem+json errors, the offline
API docs, limits (admission, body size, rate), the request log, HTTP metrics, and tracing
outermost (its span covers the others)."""

from __future__ import annotations

from fastapi import FastAPI

from service import docs, limits, problems, tracing
from service.http_metrics import HttpMetrics
from service.request_log import RequestLog
from service.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    problems.install(app)
    docs.install(app, "/openapi.json", app.title)
    limits.install(app, settings)
    app.add_middleware(RequestLog)
    app.add_middleware(HttpMetrics)
    tracing.install(app, settings)
