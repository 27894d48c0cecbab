"""Optional OpenTelemetry tracing, off unless `CUSTOMERS_OTEL_ENDPOINT` names an OTLP/HTTP
collector (e.g. `http://collector:4318/v1/traces`). On, each HTTP request of the APIs is a
server span that continues the caller's W3C `traceparent`, and calls to other services (the
rules engine) carry the span's context on. Off, nothing is installed: no middleware, no cost.

Spans hold the method, the route template, the status and the correlation id: never a path
with an id in it, a query string or a body.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http_metrics import route_template
from service.settings import Settings

# FastAPI's own instrumentation, on by default once a tracer provider exists, records query
# strings (a search can hold a name or an e-mail address) and exception messages: off in
# every app of the service, which traces through `Tracing` only.
FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}

_lock = threading.Lock()
_provider: TracerProvider | None = None


def configure(settings: Settings) -> TracerProvider | None:
    """The process's tracer provider, exporting to the collector; None when tracing is off.
    Set once per process (OpenTelemetry allows one global provider)."""
    global _provider  # noqa: PLW0603 — one per process, as OpenTelemetry's own global
    if not settings.otel_endpoint:
        return None
    with _lock:
        if _provider is None:
            resource = Resource.create({"service.name": settings.otel_service_name})
            provider = TracerProvider(resource=resource)
            exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint)
            provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            _provider = provider
    return _provider


def install(app: FastAPI, settings: Settings) -> None:
    """Trace the app's requests when tracing is configured."""
    if configure(settings) is not None:
        app.add_middleware(Tracing)


class Tracing:
    """A server span per HTTP request. Plain ASGI, like the other middlewares."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tracer = trace.get_tracer(__name__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(headers)
        method = scope["method"]
        with self.tracer.start_as_current_span(
            method, context=parent, kind=SpanKind.SERVER
        ) as span:
            status = 500
            correlation: Any = None

            async def sending(message: Message) -> None:
                nonlocal status, correlation
                if message["type"] == "http.response.start":
                    status = message["status"]
                    answered = dict(message.get("headers", ()))
                    correlation = answered.get(b"x-correlation-id")
                await send(message)

            try:
                await self.app(scope, receive, sending)
            finally:
                route = route_template(scope)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if correlation:
                    span.set_attribute("customers.correlation_id", correlation.decode("latin-1"))
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
