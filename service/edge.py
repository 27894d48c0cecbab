"""What every HTTP app of the service wears, in one order: problem+json errors, the offline
API docs, limits (admission, body size, rate), the request log, HTTP metrics, and tracing
outermost (its span covers the others)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.utils import get_parameterless_sub_dependant
from fastapi.routing import APIRoute

from service import docs, limits, problems, tracing
from service.compiled_routes import compiled
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


def add_routes(app: FastAPI, *routers: APIRouter) -> None:
    """The routers' routes added to the app itself, in order, each depending first on what
    the app's own routes depend on (the query check of service.problems), and answered from
    a plan made once where it can be (service.compiled_routes). `include_router` keeps a
    router nested (FastAPI 0.16x) and matches every request through each inclusion twice, a
    seventh of a small read's CPU; an APIRouter's routes already carry its prefix, tags,
    responses and dependencies."""
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                shared = [
                    get_parameterless_sub_dependant(depends=depends, path=route.path_format)
                    for depends in app.router.dependencies
                ]
                # FastAPI's handler reads the dependant on each request: added in place.
                route.dependant.dependencies[:0] = shared
                route.app = compiled(route) or route.app
            app.router.routes.append(route)
